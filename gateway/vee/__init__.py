"""VEE estimation and daily load characteristics of each meter's interval registers."""
