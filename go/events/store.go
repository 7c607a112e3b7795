package events

// store keeps the log beyond the process: the log's window is the working
// copy, the store is what survives a restart.
type store interface {
	// load returns the newest `limit` records, oldest first, and the highest
	// sequence ever stored (so numbering continues after a restart).
	load(limit int) (recs []*record, lastSeq uint64, err error)
	// append stores r and forgets every record with sequence <= trimTo,
	// atomically.
	append(r *record, trimTo uint64) error
	close() error
}
