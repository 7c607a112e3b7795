package updates

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	updatesv1 "github.com/polystream/polystream/go/gen/polystream/updates/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

func query(t *testing.T, e *env, sql string, batch int32) ([]*updatesv1.QueryResult, error) {
	t.Helper()
	s, err := e.client.StreamQueryResults(grpctest.Context(t), &updatesv1.QueryRequest{Query: sql, BatchSize: batch})
	if err != nil {
		t.Fatal(err)
	}
	return grpctest.RecvAll[updatesv1.QueryResult](s)
}

func TestQueryWholeTable(t *testing.T) {
	e := newEnv(t, Config{})
	res, err := query(t, e, "SELECT id, name, value FROM large_table ORDER BY id", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 100 {
		t.Fatalf("%d batches, want 100 (batch_size 0 = 100)", len(res))
	}
	id := 0
	for i, b := range res {
		if b.GetBatchNumber() != int32(i+1) || b.GetTotalBatches() != 100 || b.GetIsLast() != (i == 99) || b.GetSequence() != uint64(i+1) {
			t.Fatalf("batch %d: number %d total %d last %v seq %d", i, b.GetBatchNumber(), b.GetTotalBatches(), b.GetIsLast(), b.GetSequence())
		}
		if len(b.GetRows()) != 100 {
			t.Fatalf("batch %d has %d rows", i, len(b.GetRows()))
		}
		for _, r := range b.GetRows() {
			id++
			want := map[string]string{"id": fmt.Sprint(id), "name": fmt.Sprintf("item-%05d", id), "value": fmt.Sprint(id * 7919 % 10007)}
			for k, v := range want {
				if r.GetColumns()[k] != v {
					t.Fatalf("row %d: %s = %q, want %q", id, k, r.GetColumns()[k], v)
				}
			}
		}
	}
	if id != 10000 {
		t.Fatalf("%d rows, want 10000", id)
	}
}

func TestQueryBatching(t *testing.T) {
	e := newEnv(t, Config{})
	for _, c := range []struct {
		sql   string
		batch int32
		sizes []int
	}{
		{"SELECT id FROM large_table WHERE id <= 10", 3, []int{3, 3, 3, 1}},
		{"SELECT id FROM large_table WHERE id <= 9;", 3, []int{3, 3, 3}},
		{"SELECT id FROM large_table WHERE id < 0", 5, []int{0}},
		{"SELECT * FROM large_table", 10000, []int{10000}},
	} {
		res, err := query(t, e, c.sql, c.batch)
		if err != nil {
			t.Fatalf("%s: %v", c.sql, err)
		}
		if len(res) != len(c.sizes) {
			t.Fatalf("%s: %d batches, want %d", c.sql, len(res), len(c.sizes))
		}
		for i, b := range res {
			if len(b.GetRows()) != c.sizes[i] || b.GetBatchNumber() != int32(i+1) || b.GetTotalBatches() != int32(len(c.sizes)) || b.GetIsLast() != (i == len(res)-1) {
				t.Fatalf("%s: batch %d = %d rows, number %d, total %d, last %v", c.sql, i, len(b.GetRows()), b.GetBatchNumber(), b.GetTotalBatches(), b.GetIsLast())
			}
		}
	}
}

func TestQueryValues(t *testing.T) {
	e := newEnv(t, Config{})
	res, err := query(t, e, `SELECT 1.0 AS a, 0.1 AS b, 1e-5 AS c, 1e16 AS d, 123456789012345.0 AS e,
		NULL AS f, 0.0001 AS g, 2.5 * 2 AS h, 1.0/3 AS i, 'x''y' AS j, 42 AS k, -7 AS l, X'6869' AS m`, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a": "1.0", "b": "0.1", "c": "1e-05", "d": "1e+16", "e": "123456789012345.0",
		"f": "", "g": "0.0001", "h": "5.0", "i": "0.3333333333333333", "j": "x'y", "k": "42", "l": "-7", "m": "hi"}
	got := res[0].GetRows()[0].GetColumns()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

// Python's repr(float) for the cases where Go's and Python's defaults differ.
func TestFormatReal(t *testing.T) {
	for f, want := range map[float64]string{
		0: "0.0", math.Copysign(0, -1): "-0.0", 1: "1.0", 1.5: "1.5", 1e15: "1000000000000000.0",
		9999999999999998: "9999999999999998.0", 1e16: "1e+16", 1.5e16: "1.5e+16", 1e22: "1e+22",
		0.0001: "0.0001", 0.00012: "0.00012", 1e-5: "1e-05", 1.5e-7: "1.5e-07", 1e-100: "1e-100",
		1.7976931348623157e308: "1.7976931348623157e+308", -2.5: "-2.5", 123.456: "123.456",
		math.Inf(1): "inf", math.Inf(-1): "-inf", math.NaN(): "nan", 1e21: "1e+21", 5e-324: "5e-324",
	} {
		if got := formatReal(f); got != want {
			t.Errorf("formatReal(%v) = %q, want %q", f, got, want)
		}
	}
}

func TestQueryBadInput(t *testing.T) {
	e := newEnv(t, Config{})
	for _, c := range []struct {
		sql   string
		batch int32
		msg   string
	}{
		{"", 0, "query is required"},
		{"  \n\t", 0, "query is required"},
		{"SELECT 1", 10001, "batch_size must be between 0 and 10000, got 10001"},
		{"SELECT 1", -1, "batch_size must be between 0 and 10000, got -1"},
		{"DELETE FROM large_table", 0, "only a single SELECT statement is allowed"},
		{"SELECT 1; SELECT 2", 0, "only a single SELECT statement is allowed"},
		{"SELECT 1; DROP TABLE large_table", 0, "only a single SELECT statement is allowed"},
		{"SELECT 1;;", 0, "only a single SELECT statement is allowed"},
		{"PRAGMA table_info(large_table)", 0, "only a single SELECT statement is allowed"},
		{"-- just a comment", 0, "only a single SELECT statement is allowed"},
		{"(SELECT 1)", 0, "only a single SELECT statement is allowed"},
		{"INSERT INTO large_table SELECT * FROM large_table", 0, "only a single SELECT statement is allowed"},
	} {
		_, err := query(t, e, c.sql, c.batch)
		grpctest.WantStatus(t, err, codes.InvalidArgument, c.msg)
	}
	_, err := query(t, e, "SELECT nope FROM large_table", 0)
	grpctest.WantStatus(t, err, codes.InvalidArgument, "query failed: no such column: nope")
	_, err = query(t, e, "SELECT * FROM missing", 0)
	grpctest.WantStatus(t, err, codes.InvalidArgument, "query failed: no such table: missing")
	// WITH passes the keyword check; the statement still cannot write.
	_, err = query(t, e, "WITH t AS (SELECT 1) DELETE FROM large_table", 0)
	if st := statusOf(err); st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), "query failed: ") {
		t.Fatalf("WITH ... DELETE: %v", err)
	}
}

// Quotes and comments hide ';' and keywords from the statement check.
func TestQueryStatementCheckHonoursQuotesAndComments(t *testing.T) {
	e := newEnv(t, Config{})
	for sql, want := range map[string]string{
		"SELECT ';' AS x":                              ";",
		"select 'a;b' AS x;":                           "a;b",
		"SELECT 1 AS x; -- ; DROP TABLE x":             "1",
		"SELECT 1 AS x -- trailing comment":            "1",
		"SELECT 1 AS x /* ; DELETE */":                 "1",
		"/* lead */ SELECT 2 AS x;  /* tail */\n":      "2",
		`SELECT "a;b" AS x FROM (SELECT 3 AS "a;b")`:   "3",
		"WITH t(v) AS (SELECT 4) SELECT v AS x FROM t": "4",
		"SELECT [x] FROM (SELECT 5 AS x)":              "5",
	} {
		res, err := query(t, e, sql, 0)
		if err != nil {
			t.Fatalf("%q: %v", sql, err)
		}
		if got := res[0].GetRows()[0].GetColumns()["x"]; got != want {
			t.Fatalf("%q: x = %q, want %q", sql, got, want)
		}
	}
}

func TestQueryConnectionIsReadOnly(t *testing.T) {
	e := newEnv(t, Config{})
	_, err := e.svc.query.db.Exec("DELETE FROM large_table")
	if err == nil || !strings.Contains(err.Error(), "readonly") {
		t.Fatalf("write on the query connection: %v, want a readonly error", err)
	}
}

// Cancelling the RPC interrupts SQLite: a query that would never end stops.
func TestQueryCancelStopsQuery(t *testing.T) {
	e := newEnv(t, Config{})
	ctx, cancel := context.WithCancel(grpctest.Context(t))
	s, err := e.client.StreamQueryResults(ctx, &updatesv1.QueryRequest{
		Query: "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c WHERE x < 0",
	})
	if err != nil {
		t.Fatal(err)
	}
	grpctest.WaitFor(t, "query running", func() bool { return e.svc.query.active.Load() == 1 })
	cancel()
	_, err = s.Recv()
	if statusOf(err).Code() != codes.Canceled {
		t.Fatalf("Recv after cancel: %v", err)
	}
	grpctest.WaitFor(t, "query stopped", func() bool { return e.svc.query.active.Load() == 0 })
}

// Cancelling between batches stops the cursor too.
func TestQueryCancelMidStream(t *testing.T) {
	e := newEnv(t, Config{})
	ctx, cancel := context.WithCancel(grpctest.Context(t))
	defer cancel()
	s, err := e.client.StreamQueryResults(ctx, &updatesv1.QueryRequest{Query: "SELECT * FROM large_table", BatchSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		b, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if b.GetTotalBatches() != 10000 || b.GetBatchNumber() != int32(i) {
			t.Fatalf("batch %d: %v", i, b)
		}
	}
	cancel()
	grpctest.WaitFor(t, "query stopped", func() bool { return e.svc.query.active.Load() == 0 })
}

func TestQueryDataDir(t *testing.T) {
	dir := t.TempDir()
	e := newEnv(t, Config{DataDir: dir})
	if _, err := os.Stat(filepath.Join(dir, "query.db")); err != nil {
		t.Fatal(err)
	}
	res, err := query(t, e, "SELECT COUNT(*) AS n, SUM(value) AS s FROM large_table", 0)
	if err != nil {
		t.Fatal(err)
	}
	sum := 0
	for id := 1; id <= 10000; id++ {
		sum += id * 7919 % 10007
	}
	if c := res[0].GetRows()[0].GetColumns(); c["n"] != "10000" || c["s"] != fmt.Sprint(sum) {
		t.Fatalf("got %v", c)
	}
	// A second service on the same directory reseeds and works.
	e2 := newEnv(t, Config{DataDir: dir})
	if _, err := query(t, e2, "SELECT 1 AS x", 0); err != nil {
		t.Fatal(err)
	}
}

// Without a data directory the temporary one goes away on Close.
func TestQueryTempDirRemoved(t *testing.T) {
	svc, err := New(Config{Logs: NewLogRing(10)})
	if err != nil {
		t.Fatal(err)
	}
	dir := svc.tmpDir
	if _, err := os.Stat(filepath.Join(dir, "query.db")); err != nil {
		t.Fatal(err)
	}
	if err := svc.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s still there after Close: %v", dir, err)
	}
}

func TestQuerySingleSelect(t *testing.T) {
	for q, want := range map[string]string{
		"SELECT 1;":                "SELECT 1",
		"SELECT 1 -- c":            "SELECT 1",
		"SELECT 1 /* unterminated": "SELECT 1",
		"SELECT 'a''b;'; ":         "SELECT 'a''b;'",
	} {
		got, ok := singleSelect(q)
		if !ok || got != want {
			t.Errorf("singleSelect(%q) = %q, %v; want %q", q, got, ok, want)
		}
	}
}

// Memory stays bounded whatever the SQL: one value is at most 1 MiB, one
// batch at most 8 MiB.
func TestQueryMemoryBounds(t *testing.T) {
	e := newEnv(t, Config{})
	_, err := query(t, e, "SELECT zeroblob(2000000) AS big", 0)
	grpctest.WantStatus(t, err, codes.InvalidArgument, "query failed: string or blob too big")
	_, err = query(t, e, "SELECT hex(zeroblob(450000)) AS v FROM large_table LIMIT 20", 20)
	grpctest.WantStatus(t, err, codes.ResourceExhausted, "query batch larger than 8388608 bytes; use a smaller batch_size")
	// The same rows in small batches are fine.
	res, err := query(t, e, "SELECT hex(zeroblob(450000)) AS v FROM large_table LIMIT 6", 2)
	if err != nil || len(res) != 3 || len(res[0].GetRows()[0].GetColumns()["v"]) != 900000 {
		t.Fatalf("small batches: %d batches, %v", len(res), err)
	}
}

// A database that no longer holds the contract's data is rebuilt at start.
func TestQueryReseedsChangedData(t *testing.T) {
	dir := t.TempDir()
	svc, err := New(Config{Logs: NewLogRing(10), DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	svc.Close()
	path := filepath.Join(dir, "query.db")
	if !seeded(path) {
		t.Fatal("fresh database not recognised as seeded")
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("UPDATE large_table SET value = value + 1 WHERE id = 5000"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if seeded(path) {
		t.Fatal("changed database still recognised as seeded")
	}
	e := newEnv(t, Config{DataDir: dir})
	res, err := query(t, e, "SELECT value FROM large_table WHERE id = 5000", 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := res[0].GetRows()[0].GetColumns()["value"]; got != fmt.Sprint(5000*7919%10007) {
		t.Fatalf("value %s after restart", got)
	}
}
