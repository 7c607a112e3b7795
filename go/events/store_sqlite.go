package events

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	_ "modernc.org/sqlite" // pure-Go driver "sqlite"
)

// sqliteFile is the database's name inside the data directory; the Python
// server uses the same file and schema (docs/patterns/events.md).
const sqliteFile = "events.db"

// sqliteSchema is shared with the Python implementation: change both.
//
//	channels  JSON array of target channels, [] = every channel
//	timestamp publish time, Unix nanoseconds
//	payload   serialized google.protobuf.Any, NULL when absent
//	metadata  JSON object of strings
const sqliteSchema = `
CREATE TABLE IF NOT EXISTS events (
	sequence  INTEGER PRIMARY KEY,
	id        TEXT    NOT NULL UNIQUE,
	type      TEXT    NOT NULL,
	channels  TEXT    NOT NULL DEFAULT '[]',
	timestamp INTEGER NOT NULL,
	data      TEXT    NOT NULL DEFAULT '',
	payload   BLOB,
	metadata  TEXT    NOT NULL DEFAULT '{}'
)`

// sqliteStore is the durable store: one row per retained event.
type sqliteStore struct {
	db *sql.DB
}

func openSQLite(dir string) (*sqliteStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// WAL with synchronous=NORMAL survives a killed process (what a restart
	// test does) without an fsync per event.
	dsn := "file:" + filepath.Join(dir, sqliteFile) +
		"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1) // the hub's lock serializes writes anyway
	if _, err := db.Exec(sqliteSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("create schema in %s: %w", dir, err)
	}
	return &sqliteStore{db: db}, nil
}

func (s *sqliteStore) load(limit int) ([]*record, uint64, error) {
	var last sql.NullInt64
	if err := s.db.QueryRow(`SELECT MAX(sequence) FROM events`).Scan(&last); err != nil {
		return nil, 0, err
	}
	rows, err := s.db.Query(`SELECT sequence, id, type, channels, timestamp, data, payload, metadata
		FROM events ORDER BY sequence DESC LIMIT ?`, limit)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	var recs []*record
	for rows.Next() {
		var (
			r                  record
			channels, metadata string
			nanos              int64
			payload            []byte
		)
		if err := rows.Scan(&r.seq, &r.id, &r.typ, &channels, &nanos, &r.data, &payload, &metadata); err != nil {
			return nil, 0, err
		}
		if err := json.Unmarshal([]byte(channels), &r.targets); err != nil {
			return nil, 0, fmt.Errorf("event %d: channels: %w", r.seq, err)
		}
		if err := json.Unmarshal([]byte(metadata), &r.metadata); err != nil {
			return nil, 0, fmt.Errorf("event %d: metadata: %w", r.seq, err)
		}
		if payload != nil {
			r.payload = new(anypb.Any)
			if err := proto.Unmarshal(payload, r.payload); err != nil {
				return nil, 0, fmt.Errorf("event %d: payload: %w", r.seq, err)
			}
		}
		r.time = timestamppb.New(time.Unix(0, nanos))
		r.typeSegs = strings.Split(r.typ, ".")
		recs = append(recs, &r)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	slices.Reverse(recs)
	return recs, uint64(last.Int64), nil
}

func (s *sqliteStore) append(r *record, trimTo uint64) error {
	targets := r.targets
	if targets == nil {
		targets = []string{}
	}
	channels, _ := json.Marshal(targets)
	metadata := []byte("{}")
	if len(r.metadata) > 0 {
		metadata, _ = json.Marshal(r.metadata) // keys sorted
	}
	var payload []byte
	if r.payload != nil {
		var err error
		if payload, err = (proto.MarshalOptions{Deterministic: true}).Marshal(r.payload); err != nil {
			return err
		}
	}
	tx, err := s.db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	// Trim first: a row beyond the retention window may hold the id being
	// reused (ids that old count as new).
	if _, err := tx.Exec(`DELETE FROM events WHERE sequence <= ?`, trimTo); err != nil {
		return err
	}
	if _, err := tx.Exec(`INSERT INTO events (sequence, id, type, channels, timestamp, data, payload, metadata)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		r.seq, r.id, r.typ, string(channels), r.time.AsTime().UnixNano(), r.data, payload, string(metadata)); err != nil {
		return err
	}
	return tx.Commit()
}

func (s *sqliteStore) close() error { return s.db.Close() }
