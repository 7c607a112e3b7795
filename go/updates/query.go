package updates

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	sqlite "modernc.org/sqlite"

	updatesv1 "github.com/polystream/polystream/go/gen/polystream/updates/v1"
)

const (
	queryRows        = 10000 // rows in large_table
	defaultBatchSize = 100
	maxBatchSize     = 10000

	// Memory bounds whatever the SQL: one value (string or blob, also
	// intermediate ones such as zeroblob(1e9)) and one batch. A batch that
	// large could not be sent anyway under the default 4 MiB message limit.
	maxValueBytes = 1 << 20
	maxBatchBytes = 8 << 20
)

// queryDB is the seeded database, opened read-only: whatever the statement
// check lets through, SQLite itself refuses to write.
type queryDB struct {
	db     *sql.DB
	active atomic.Int64 // queries running now (tests check cancellation with it)
}

// openQueryDB makes sure dir/query.db (the name Python uses too) holds
// exactly the contract's data, rebuilding it if not, and opens it read-only.
// A rebuild happens aside and is renamed into place, so a reader never sees
// a half-seeded file.
func openQueryDB(dir string) (*queryDB, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	path, err := filepath.Abs(filepath.Join(dir, "query.db"))
	if err != nil {
		return nil, err
	}
	if !seeded(path) {
		tmp, err := os.CreateTemp(dir, "query.db.seed-")
		if err != nil {
			return nil, err
		}
		tmp.Close()
		defer os.Remove(tmp.Name())
		if err := seed(tmp.Name()); err != nil {
			return nil, fmt.Errorf("seed query database: %w", err)
		}
		if err := os.Rename(tmp.Name(), path); err != nil {
			return nil, err
		}
	}
	db, err := sql.Open("sqlite", readOnlyDSN(path))
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(8)
	db.SetMaxIdleConns(2)
	if err := db.Ping(); err != nil {
		db.Close()
		return nil, err
	}
	return &queryDB{db: db}, nil
}

func readOnlyDSN(path string) string {
	return (&url.URL{Scheme: "file", Path: path, RawQuery: "mode=ro&_pragma=busy_timeout(5000)"}).String()
}

const createTable = `CREATE TABLE large_table (id INTEGER PRIMARY KEY, name TEXT NOT NULL, value INTEGER NOT NULL)`

// seeded reports whether path already holds exactly the contract's table and
// nothing else, checked row by row inside SQLite.
func seeded(path string) bool {
	if _, err := os.Stat(path); err != nil {
		return false
	}
	db, err := sql.Open("sqlite", readOnlyDSN(path))
	if err != nil {
		return false
	}
	defer db.Close()
	var objects int
	var schema string
	if db.QueryRow(`SELECT COUNT(*), COALESCE(MAX(sql), '') FROM sqlite_master`).Scan(&objects, &schema) != nil ||
		objects != 1 || schema != createTable {
		return false
	}
	var rows, ids, names, values int
	err = db.QueryRow(`SELECT COUNT(*), SUM(id BETWEEN 1 AND ?1), SUM(name = printf('item-%05d', id)),
		SUM(value = (id * 7919) % 10007) FROM large_table`, queryRows).Scan(&rows, &ids, &names, &values)
	return err == nil && rows == queryRows && ids == queryRows && names == queryRows && values == queryRows
}

// seed writes large_table: id 1..10000, name item-%05d, value (id*7919)%10007.
func seed(path string) error {
	db, err := sql.Open("sqlite", path)
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	tx, err := db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.Exec(createTable); err != nil {
		return err
	}
	// One statement inside SQLite instead of 10,000 round trips.
	if _, err := tx.Exec(`INSERT INTO large_table (id, name, value)
		WITH RECURSIVE n(id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM n WHERE id < ?)
		SELECT id, printf('item-%05d', id), (id * 7919) % 10007 FROM n`, queryRows); err != nil {
		return err
	}
	return tx.Commit()
}

func (q *queryDB) close() error { return q.db.Close() }

// conn takes a connection from the pool for one query, with the value-size
// limit set (limits belong to the connection, so it is set every time).
func (q *queryDB) conn(ctx context.Context) (*sql.Conn, error) {
	c, err := q.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := sqlite.Limit(c, sqliteLimitLength, maxValueBytes); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// sqliteLimitLength is SQLITE_LIMIT_LENGTH, the largest string or blob.
const sqliteLimitLength = 0

func (s *Service) StreamQueryResults(req *updatesv1.QueryRequest, stream updatesv1.StreamService_StreamQueryResultsServer) error {
	if strings.TrimSpace(req.GetQuery()) == "" {
		return invalid("query is required")
	}
	batch := int(req.GetBatchSize())
	if batch < 0 || batch > maxBatchSize {
		return invalid("batch_size must be between 0 and %d, got %d", maxBatchSize, batch)
	}
	if batch == 0 {
		batch = defaultBatchSize
	}
	stmt, ok := singleSelect(req.GetQuery())
	if !ok {
		return invalid("only a single SELECT statement is allowed")
	}

	// Every step runs under the stream's context: a client that goes away
	// interrupts SQLite (QueryContext), it does not leave the query running.
	ctx, done := s.life.Stream(stream.Context())
	defer done()
	s.query.active.Add(1)
	defer s.query.active.Add(-1)

	conn, err := s.query.conn(ctx)
	if err != nil {
		return s.queryErr(ctx, err)
	}
	defer conn.Close()
	var count int64
	if err := conn.QueryRowContext(ctx, "SELECT COUNT(*) FROM (\n"+stmt+"\n)").Scan(&count); err != nil {
		return s.queryErr(ctx, err)
	}
	total := int32(max(1, (count+int64(batch)-1)/int64(batch)))

	rows, err := conn.QueryContext(ctx, stmt)
	if err != nil {
		return s.queryErr(ctx, err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return s.queryErr(ctx, err)
	}
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	batchBytes := 0
	readRow := func() (*updatesv1.Row, error) {
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		m := make(map[string]string, len(cols))
		for i, c := range cols {
			v := formatValue(vals[i])
			m[c] = v
			batchBytes += len(c) + len(v)
		}
		return &updatesv1.Row{Columns: m}, nil
	}

	// One batch is held back until the next row is known to exist, so is_last
	// comes from the cursor itself, never from a guess: at most batch+1 rows
	// are in memory.
	var (
		seq   uint64
		num   int32
		cur   = make([]*updatesv1.Row, 0, batch)
		more  = rows.Next()
		flush = func(last bool) error {
			seq++
			num++
			t := total
			if t < num || (last && t != num) {
				t = num // the data moved between COUNT and SELECT (random(), say)
			}
			err := stream.Send(&updatesv1.QueryResult{Rows: cur, BatchNumber: num, TotalBatches: t, IsLast: last, Sequence: seq})
			cur, batchBytes = make([]*updatesv1.Row, 0, batch), 0
			return err
		}
	)
	for more {
		row, err := readRow()
		if err != nil {
			return s.queryErr(ctx, err)
		}
		cur = append(cur, row)
		if batchBytes > maxBatchBytes {
			return status.Errorf(codes.ResourceExhausted, "query batch larger than %d bytes; use a smaller batch_size", maxBatchBytes)
		}
		more = rows.Next()
		if len(cur) == batch || !more {
			if !more {
				if err := rows.Err(); err != nil {
					return s.queryErr(ctx, err)
				}
			}
			if err := flush(!more); err != nil {
				return err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return s.queryErr(ctx, err)
	}
	if num == 0 { // empty result: one empty, last batch
		return flush(true)
	}
	return nil
}

// queryErr tells a cancelled query (the client left, or shutdown) from an SQL
// error, which is the client's mistake.
func (s *Service) queryErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return s.life.Err(ctx)
	}
	return invalid("query failed: %s", sqliteMessage(err))
}

// sqliteSuffix is the " (1)" result code modernc appends to messages.
var sqliteSuffix = regexp.MustCompile(` \(\d+\)$`)

// sqliteMessage strips the Go driver's decorations so the text is close to
// what Python's sqlite3 module reports ("no such table: x").
func sqliteMessage(err error) string {
	var se *sqlite.Error
	msg := err.Error()
	if errors.As(err, &se) {
		msg = se.Error()
	}
	msg = sqliteSuffix.ReplaceAllString(msg, "")
	if i := strings.Index(msg, ": "); i >= 0 && strings.HasPrefix(msg, "SQL logic error") {
		msg = msg[i+2:]
	}
	return msg
}
