"""`meter-gateway dead-letter list|replay`: look at the dead-letter store, and replay it.

`list` groups the records of `<data_dir>/dead-letter/*.jsonl` by reason. Reasons are
normalised so that one cause is one row: numbers become `N` and times `T`, so
`voltage_v[1]: 1234.0 above 1000.0` and `voltage_v[0]: 1250.5 above 1000.0` both read
`voltage_v[N]: N above N` (per source; a batch element's reason keeps its
`readings[N]: ` prefix, so it is a row of its own). Each row has the count,
the first and last time received, and an example (file:line, topic or device, the
reason in full).

`replay` puts the selected records through TODAY's configuration, the way they came:

- an MQTT message: its payload through the format its topic maps to in today's
  `mqtt.subscriptions` (first match, as the gateway routes), then the validator and the
  meter rules (`Pipeline.handle_message`, the live path);
- one element of a batch (a record with `index`): that element alone, through the
  `json-batch` format's checks, then validation; reasons keep its position. Only when
  today's subscriptions still route its topic to `json-batch`;
- the elements of a batch rejected for one reason (`"kind": "elements"`: a count, their
  indexes, and the elements): those elements, each judged as above;
- a Modbus reading the validator refused: the reading again (`Pipeline.handle_reading`);
- recorded traffic rejected by `meter-gateway replay` (`"origin": "replay"`, a field only
  the gateway writes; its topic `replay:FILE:LINE` is only a label): the line as a
  `json` reading. A record without that field is a client's, whatever its topic says:
  its topic goes through today's subscriptions like any other.

Every check live ingest applies applies here too: the format its topic maps to (a
meter cannot write as another), the meter id rule, validation, and `limits.max_meters`
(counted from zero in each run, the topology's meters always taken).

Not replayable, skipped and counted: Modbus poll errors (no reading was made), lines the
database refused (`storage`: not a validation matter; fix and write them by hand), spool
and webhook notes, payloads cut at `max_payload_bytes`, MQTT topics today's
subscriptions do not route, meter events and status messages (events are not raised
from the past), elements nested too deep (no configuration takes them).

Validation's clock is each record's `received_at`: a reading is judged as if it arrived
when it did, with today's bounds (one that was too old then is still too old). What now
passes is stored with a BatchWriter straight to the configured database (no spool, no
MQTT, no detectors, no webhook). What still fails is reported by reason and NOT written
to the dead-letter store again: its record stays where it is, to replay after the next
correction.

Nothing is stored twice: every record whose readings the database accepted is appended
to the ledger `<data_dir>/dead-letter/replayed` (its line hash, file and line; fsync'd
after the database has accepted the batch); the next dead-letter replay skips it
("already replayed"). A record counts as replayed once any reading of it is stored (a batch
message partly valid: the rest is reported as still rejected, and not retried again).
A record standing for several elements of a batch is replayed element by element: the
ledger keeps the indexes of those still rejected (`rest`), and the next dead-letter
replay takes those only, as if each had a record of its own.
The ledger is written only then: an interrupted dead-letter replay takes up the rest
next time (the database overwrites a point written twice with the same values anyway).

Safe while a gateway runs: only complete lines are read (a line being appended is left
for the next run), and the store's files are never written.

The parts: `query.py` selects records and groups them by reason (`list`); `plans.py`
says what a record is and how it goes through the pipeline again; `replay.py` runs
the dead-letter replay (writer, ledger, report); `cli.py` is the command line.
"""

from meter_gateway.gateway.deadletters.query import (
    ReasonGroup,
    Selection,
    group_reasons,
    normalise_reason,
    parse_since,
    record_count,
    render_table,
    select,
)
from meter_gateway.gateway.deadletters.replay import DeadLetterReplay, DeadLetterReplayReport

__all__ = [
    "DeadLetterReplay",
    "DeadLetterReplayReport",
    "ReasonGroup",
    "Selection",
    "group_reasons",
    "normalise_reason",
    "parse_since",
    "record_count",
    "render_table",
    "select",
]
