package grpctest

import (
	"bytes"
	"sync"
)

// Output collects what a server or process writes (its log, its stderr)
// from several goroutines at once, for checks and failure reports.
type Output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}
