package chat

import (
	"fmt"
	"testing"
	"time"

	chatv1 "github.com/polystream/polystream/go/gen/polystream/chat/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

func TestParseSlowReader(t *testing.T) {
	for fault, want := range map[string]time.Duration{"slow-reader=1": time.Millisecond, "slow-reader=60000": time.Minute} {
		if d, ok, err := ParseSlowReader(fault); !ok || err != nil || d != want {
			t.Errorf("%s: %v %v %v, want %v", fault, d, ok, err, want)
		}
	}
	for _, fault := range []string{"", "drop", "reorder"} {
		if _, ok, err := ParseSlowReader(fault); ok || err != nil {
			t.Errorf("%q taken for slow-reader: %v %v", fault, ok, err)
		}
	}
	for _, fault := range []string{"slow-reader", "slow-reader=", "slow-reader=0", "slow-reader=-5", "slow-reader=60001", "slow-reader=1.5"} {
		_, ok, err := ParseSlowReader(fault)
		want := fmt.Sprintf(`--fault slow-reader=<ms> needs milliseconds between 1 and 60000, got %q`, fault)
		if !ok || err == nil || err.Error() != want {
			t.Errorf("%q: %v %v, want %s", fault, ok, err, want)
		}
	}
}

// slow-reader=100: the server reads one uploaded message per 100 ms, so
// they reach the room at that pace (without the fault: all at once).
func TestFaultSlowReaderPacesUploads(t *testing.T) {
	e := newEnv(t, Config{Fault: "slow-reader=100"})
	ctx := grpctest.Context(t)
	watcher := subscribe(t, ctx, e, "slow", "w")
	u, err := e.client.UploadMessages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := u.Send(&chatv1.Message{User: "bulk", Room: "slow", Content: fmt.Sprint("m", i)}); err != nil {
			t.Fatal(err)
		}
	}
	var at []time.Time
	for range 5 {
		watcher.next()
		at = append(at, time.Now())
	}
	if spread := at[4].Sub(at[0]); spread < 350*time.Millisecond {
		t.Fatalf("5 uploads reached the room within %v, want about 400ms (one per 100ms)", spread)
	}
	if r, err := u.CloseAndRecv(); err != nil || r.GetMessageCount() != 5 {
		t.Fatalf("upload: %v %v", r, err)
	}
}
