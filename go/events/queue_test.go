package events

import (
	"math/rand/v2"
	"testing"
)

func recs(n int) []*record {
	out := make([]*record, n)
	for i := range out {
		out[i] = &record{seq: uint64(i + 1), id: "id" + string(rune('a'+i))}
	}
	return out
}

// describe renders a queue's content: "3" an event, "[1-2]" a marker.
func describe(q *queue) []string {
	var out []string
	for i := range q.n {
		e := q.at(i)
		switch {
		case e.rec != nil:
			out = append(out, itoa(e.rec.seq))
		case e.drop != nil:
			if e.drop.count != e.drop.last.seq-e.drop.first.seq+1 {
				out = append(out, "bad-count")
			}
			out = append(out, "["+itoa(e.drop.first.seq)+"-"+itoa(e.drop.last.seq)+"]")
		default:
			out = append(out, "U")
		}
	}
	return out
}

func itoa(u uint64) string { return string(rune('0' + u%10)) }

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestQueueDropNewestMergesAtTheTail(t *testing.T) {
	q := newQueue(4)
	r := recs(9)
	for _, x := range r[:4] {
		q.push(entry{rec: x})
	}
	q.dropNewest(r[4])
	q.dropNewest(r[5])
	if got := describe(q); !equal(got, []string{"1", "2", "3", "4", "[5-6]"}) {
		t.Fatalf("got %v", got)
	}
	q.pop() // consumer takes 1: room for one event, after the marker
	q.push(entry{rec: r[6]})
	q.dropNewest(r[7]) // a new gap: a new marker
	if got := describe(q); !equal(got, []string{"2", "3", "4", "[5-6]", "7", "[8-8]"}) {
		t.Fatalf("got %v", got)
	}
	if q.events != 4 || !q.full() {
		t.Fatalf("markers must not count: events=%d", q.events)
	}
}

func TestQueueDropOldestPutsTheMarkerAtTheGap(t *testing.T) {
	q := newQueue(4)
	r := recs(9)
	for _, x := range r[:4] {
		q.push(entry{rec: x})
	}
	for _, x := range r[4:7] { // evicts 1, 2, 3
		q.dropOldest()
		q.push(entry{rec: x})
	}
	if got := describe(q); !equal(got, []string{"[1-3]", "4", "5", "6", "7"}) {
		t.Fatalf("got %v", got)
	}
	m, _ := q.pop()
	if m.drop == nil || m.drop.count != 3 || m.drop.first.id != r[0].id || m.drop.last.id != r[2].id {
		t.Fatalf("marker %+v", m.drop)
	}
	// An acknowledgement ahead of the oldest event stays ahead of the marker.
	q.push(entry{update: &subscriptionUpdate{}})
	q.pop() // 4
	q.pop() // 5
	q.pop() // 6  -> queue: 7 U
	q.push(entry{rec: r[7]})
	q.push(entry{rec: r[8]})
	q.push(entry{rec: &record{seq: 10}})
	q.dropOldest() // evicts 7, which is before U
	if got := describe(q); !equal(got, []string{"[7-7]", "U", "8", "9", "0"}) {
		t.Fatalf("got %v", got)
	}
	q.dropOldest() // evicts 8: not adjacent to the first marker, so a new one
	if got := describe(q); !equal(got, []string{"[7-7]", "U", "[8-8]", "9", "0"}) {
		t.Fatalf("got %v", got)
	}
	q.dropOldest() // evicts 9: merges into [8-8]
	if got := describe(q); !equal(got, []string{"[7-7]", "U", "[8-9]", "0"}) {
		t.Fatalf("got %v", got)
	}
}

// TestQueueStaysBounded drives random operations and checks the bound:
// at most size events and never two markers side by side.
func TestQueueStaysBounded(t *testing.T) {
	const size = 4
	for _, policy := range []Policy{DropNewest, DropOldest} {
		q := newQueue(size)
		var seq uint64
		for range 100000 {
			switch rand.IntN(3) {
			case 0:
				q.pop()
			default:
				seq++
				r := &record{seq: seq}
				switch {
				case !q.full():
					q.push(entry{rec: r})
				case policy == DropNewest:
					q.dropNewest(r)
				default:
					q.dropOldest()
					q.push(entry{rec: r})
				}
			}
			if q.events > size || q.n > 2*size+1 {
				t.Fatalf("%v: %d events, %d entries", policy, q.events, q.n)
			}
			for i := 1; i < q.n; i++ {
				if q.at(i).drop != nil && q.at(i-1).drop != nil {
					t.Fatalf("%v: adjacent markers", policy)
				}
			}
		}
		if len(q.buf) > 16 {
			t.Fatalf("%v: ring grew to %d", policy, len(q.buf))
		}
	}
}
