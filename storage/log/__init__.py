"""The durable log the gateway's stores are built on.

    owner --append--> GroupCommit --write + fsync--> Segments (record files)
                                                        |
    readers <--read at their own mark (cursor)----------+

- `segment`: the record format (length, CRC, seq, commit time, payload) and reading
  a file back record by record, stopping at what is torn or damaged.
- `segments`: a directory of segment files: durable appends, the scan at start (what
  is torn is cut off, what is damaged is reported), deleting the oldest.
- `commit`: group commit, the one writer: what arrives while a write-and-fsync runs
  goes in the next, a refused write (a full disk) waits in memory and is retried.
- `marks`: numbers kept in small files replaced atomically (cursors, ledgers, holds).

Built on it: the spool (`storage/spool`: one reader, the database writer), the event
outbox (`gateway/events/outbox.py`: one cursor per destination, and a hold for the
engine's snapshot) and the dead-letter store (`storage/deadletter.py`: group commit
into day files people read).
"""
