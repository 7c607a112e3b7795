package events

// entry is one item of a subscriber's queue: a log event, a drop marker
// standing where dropped events would have been, the acknowledgement of a
// subscription update, or the end of a SubscribeMultiple stream whose
// client half-closed, in the order they happened. Exactly one is set.
type entry struct {
	rec    *record
	drop   *dropMarker
	update *subscriptionUpdate
	end    bool
}

// subscriptionUpdate is a polystream.subscription_updated event to send;
// events queued after it were filtered with its filters and channel.
type subscriptionUpdate struct {
	channel    string
	eventTypes []string
}

// dropMarker is a polystream.dropped event still being merged into.
type dropMarker struct {
	count       uint64
	first, last *record
}

func (m *dropMarker) add(r *record) {
	if m.first == nil {
		m.first = r
	}
	m.last = r
	m.count++
}

// queue is a subscriber's bounded FIFO. Only log events count against its
// size; markers never sit next to each other, so it holds at most about
// 2*size entries whatever the policy. It has no lock: the subscriber's
// lock guards it.
type queue struct {
	size   int     // max log events
	events int     // log events queued now
	buf    []entry // ring, grown by doubling up to what the bound needs
	head   int
	n      int
}

func newQueue(size int) *queue { return &queue{size: size} }

func (q *queue) full() bool { return q.events >= q.size }

func (q *queue) at(i int) *entry { return &q.buf[(q.head+i)%len(q.buf)] }

func (q *queue) push(e entry) {
	if q.n == len(q.buf) {
		grown := make([]entry, max(8, 2*len(q.buf)))
		for i := range q.n {
			grown[i] = *q.at(i)
		}
		q.buf, q.head = grown, 0
	}
	*q.at(q.n) = e
	q.n++
	if e.rec != nil {
		q.events++
	}
}

func (q *queue) pop() (entry, bool) {
	if q.n == 0 {
		return entry{}, false
	}
	e := *q.at(0)
	*q.at(0) = entry{} // let the record go
	q.head = (q.head + 1) % len(q.buf)
	q.n--
	if e.rec != nil {
		q.events--
	}
	return e, true
}

// dropNewest records that r was refused: the gap is at the tail, so r joins
// a marker there.
func (q *queue) dropNewest(r *record) {
	if q.n > 0 && q.at(q.n-1).drop != nil {
		q.at(q.n - 1).drop.add(r)
		return
	}
	m := &dropMarker{}
	m.add(r)
	q.push(entry{drop: m})
}

// dropOldest evicts the oldest queued event; the marker takes its place,
// merged with a marker just before it. Only markers and control entries
// can precede the oldest event, so the shifting below moves a few entries.
func (q *queue) dropOldest() {
	i := 0
	for q.at(i).rec == nil {
		i++
	}
	victim := q.at(i).rec
	q.events--
	if i > 0 && q.at(i-1).drop != nil {
		q.at(i - 1).drop.add(victim)
		// Remove entry i: shift the entries before it one step back.
		for j := i; j > 0; j-- {
			*q.at(j) = *q.at(j - 1)
		}
		*q.at(0) = entry{}
		q.head = (q.head + 1) % len(q.buf)
		q.n--
		return
	}
	m := &dropMarker{}
	m.add(victim)
	*q.at(i) = entry{drop: m}
}
