package chat

import (
	"context"
	"fmt"
	"testing"
	"time"

	chatv1 "github.com/polystream/polystream/go/gen/polystream/chat/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

// UploadReadDelay 100ms: the server reads one uploaded message per 100 ms,
// so they reach the room at that pace (without it: all at once).
func TestUploadReadDelayPacesUploads(t *testing.T) {
	e := newEnv(t, Config{UploadReadDelay: 100 * time.Millisecond})
	ctx := grpctest.Context(t)
	watcher := subscribe(t, ctx, e, "slow", "w")
	u, err := e.client.UploadMessages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
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
	if first := at[0].Sub(began); first < 90*time.Millisecond {
		t.Fatalf("the first upload reached the room after %v, want a wait of 100ms before it too", first)
	}
	if spread := at[4].Sub(at[0]); spread < 350*time.Millisecond {
		t.Fatalf("5 uploads reached the room within %v, want about 400ms (one per 100ms)", spread)
	}
	if r, err := u.CloseAndRecv(); err != nil || r.GetMessageCount() != 5 {
		t.Fatalf("upload: %v %v", r, err)
	}
}

// A cancelled upload ends the wait at once instead of sitting out the delay;
// with no delay there is no wait at all.
func TestUploadReadWaitEndsWithTheUpload(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s := New(Config{UploadReadDelay: time.Minute})
	defer s.Close()
	began := time.Now()
	if s.uploadReadWait(ctx) {
		t.Fatal("the wait went on after the upload was cancelled")
	}
	if took := time.Since(began); took > time.Second {
		t.Fatalf("a cancelled wait took %v", took)
	}
	none := New(Config{})
	defer none.Close()
	began = time.Now()
	if !none.uploadReadWait(context.Background()) || time.Since(began) > time.Second {
		t.Fatal("without a delay an upload read waited")
	}
}
