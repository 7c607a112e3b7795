package conformancedriver

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/polystream/polystream/go/gen/polystream/conformance/v1"
	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
	updatesv1 "github.com/polystream/polystream/go/gen/polystream/updates/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

// The driver runs in-process; the servers are the real ones, started as
// processes on 127.0.0.1 port 0: the Go server built from go/cmd/polystream
// and the Python server (/usr/bin/python3 -m polystream serve), each where it
// exists. Header, trailer, retry and cancellation details run against small
// fake servers in fakes_test.go.

func repoRoot(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

var (
	goServerOnce sync.Once
	goServerBin  string
	goServerErr  error
)

// buildGoServer builds go/cmd/polystream once per test binary.
func buildGoServer(t testing.TB) string {
	root := repoRoot(t)
	if _, err := os.Stat(filepath.Join(root, "go", "cmd", "polystream")); err != nil {
		return ""
	}
	goServerOnce.Do(func() {
		dir, err := os.MkdirTemp("", "polystream-driver-test")
		if err != nil {
			goServerErr = err
			return
		}
		goServerBin = filepath.Join(dir, "polystream")
		cmd := exec.Command("go", "build", "-o", goServerBin, "./go/cmd/polystream")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			goServerErr = fmt.Errorf("go build ./go/cmd/polystream: %v\n%s", err, out)
		}
	})
	if goServerErr != nil {
		t.Fatal(goServerErr)
	}
	return goServerBin
}

type serverCmd struct {
	name string
	cmd  func(t testing.TB) *exec.Cmd
}

func servers(t *testing.T) []serverCmd {
	var list []serverCmd
	if bin := buildGoServer(t); bin != "" {
		list = append(list, serverCmd{"go", func(testing.TB) *exec.Cmd {
			return exec.Command(bin, "serve", "--host", "127.0.0.1", "--port", "0")
		}})
	}
	root := repoRoot(t)
	_, errPy := os.Stat("/usr/bin/python3")
	if _, err := os.Stat(filepath.Join(root, "python", "polystream", "server.py")); err == nil && errPy == nil {
		list = append(list, serverCmd{"python", func(testing.TB) *exec.Cmd {
			cmd := exec.Command("/usr/bin/python3", "-m", "polystream", "serve", "--host", "127.0.0.1", "--port", "0")
			cmd.Dir = filepath.Join(root, "python")
			return cmd
		}})
	}
	if len(list) == 0 {
		t.Skip("no server implementation in this tree yet")
	}
	return list
}

// startServer starts a server process and returns the address it printed.
func startServer(t *testing.T, s serverCmd) string {
	cmd := s.cmd(t)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "polystream listening on "); ok {
				addr <- a
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case a := <-addr:
		return a
	case <-time.After(30 * time.Second):
		t.Fatalf("%s server did not print its address", s.name)
		return ""
	}
}

// startDriver serves the driver in-process and returns a client of it.
func startDriver(t testing.TB) pb.ClientDriverClient {
	t.Helper()
	_, addr := grpctest.Serve(t, func(r grpc.ServiceRegistrar) { pb.RegisterClientDriverServer(r, New()) })
	return pb.NewClientDriverClient(grpctest.Dial(t, addr))
}

// runAll performs one Run and collects its observations (the last is finished).
func runAll(t testing.TB, d pb.ClientDriverClient, req *pb.RunRequest) []*pb.Observation {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := d.Run(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	obs, err := grpctest.RecvAll[pb.Observation](stream)
	if err != nil {
		t.Fatalf("Run: %v (observed so far: %v)", err, obs)
	}
	if len(obs) == 0 || obs[len(obs)-1].GetFinished() == nil {
		t.Fatalf("Run did not end with finished: %v", obs)
	}
	for i := 1; i < len(obs); i++ {
		if obs[i].GetAtUnixNanos() < obs[i-1].GetAtUnixNanos() {
			t.Fatalf("observation %d is earlier than the one before", i)
		}
	}
	return obs
}

func finished(obs []*pb.Observation) *pb.Finished { return obs[len(obs)-1].GetFinished() }

func received(obs []*pb.Observation) []*pb.Received {
	var out []*pb.Received
	for _, o := range obs {
		if r := o.GetReceived(); r != nil {
			out = append(out, r)
		}
	}
	return out
}

func wantCode(t testing.TB, obs []*pb.Observation, code string) {
	t.Helper()
	if f := finished(obs); f.GetCode() != code {
		t.Fatalf("finished code %s (%q), want %s; observations %v", f.GetCode(), f.GetMessage(), code, obs)
	}
}

// broadcast publishes an event through the driver's unary scenario and
// returns its id.
func broadcast(t testing.TB, d pb.ClientDriverClient, target, channel, typ string) string {
	t.Helper()
	obs := runAll(t, d, &pb.RunRequest{Target: target, Scenario: &pb.RunRequest_Unary{Unary: &pb.Unary{
		Method:      "/polystream.events.v1.EventService/Broadcast",
		RequestJson: fmt.Sprintf(`{"event":{"type":%q,"data":"{}"},"target_channels":[%q]}`, typ, channel),
	}}})
	wantCode(t, obs, "OK")
	var resp struct {
		EventID string `json:"event_id"`
	}
	if err := json.Unmarshal([]byte(finished(obs).GetResponseJson()), &resp); err != nil || resp.EventID == "" {
		t.Fatalf("Broadcast response %q: %v", finished(obs).GetResponseJson(), err)
	}
	return resp.EventID
}

var uniq struct {
	sync.Mutex
	n int
}

func unique(prefix string) string {
	uniq.Lock()
	defer uniq.Unlock()
	uniq.n++
	return fmt.Sprintf("%s-%d-%d", prefix, time.Now().UnixNano(), uniq.n)
}

// TestScenariosAgainstRealServers runs every plain scenario against each server.
func TestScenariosAgainstRealServers(t *testing.T) {
	for _, s := range servers(t) {
		t.Run(s.name, func(t *testing.T) {
			target := startServer(t, s)
			d := startDriver(t)

			// Three events on a fresh channel; a subscription resuming after the
			// first gets the other two by replay, so nothing races the publisher.
			published := func(t *testing.T) (channel string, ids []string) {
				channel = unique("ch")
				for _, typ := range []string{"user.created", "user.updated", "user.deleted"} {
					ids = append(ids, broadcast(t, d, target, channel, typ))
				}
				return channel, ids
			}

			t.Run("subscribe stop_after", func(t *testing.T) {
				channel, ids := published(t)
				obs := runAll(t, d, &pb.RunRequest{Target: target, Scenario: &pb.RunRequest_Subscribe{Subscribe: &pb.Subscribe{
					Request:   &eventsv1.SubscribeRequest{ClientId: unique("c"), Channel: channel, LastEventId: ids[0]},
					StopAfter: 2,
				}}})
				wantCode(t, obs, "OK")
				var got []string
				for _, r := range received(obs) {
					if r.GetSequence() > 0 {
						got = append(got, r.GetId())
					}
				}
				if strings.Join(got, ",") != strings.Join(ids[1:], ",") {
					t.Fatalf("received %v, want %v", got, ids[1:])
				}
				if obs[0].GetConnected() == nil {
					t.Fatalf("first observation %v, want connected", obs[0])
				}
				r := received(obs)[0]
				var ev map[string]any
				if err := json.Unmarshal([]byte(r.GetJson()), &ev); err != nil || ev["id"] != r.GetId() || ev["channel"] != channel {
					t.Fatalf("received json %s (%v)", r.GetJson(), err)
				}
			})

			t.Run("subscribe cancel_after", func(t *testing.T) {
				channel, ids := published(t)
				obs := runAll(t, d, &pb.RunRequest{Target: target, CancelAfter: 1, Scenario: &pb.RunRequest_Subscribe{Subscribe: &pb.Subscribe{
					Request: &eventsv1.SubscribeRequest{ClientId: unique("c"), Channel: channel, LastEventId: ids[0]},
				}}})
				wantCode(t, obs, "CANCELLED")
				if n := len(received(obs)); n != 1 {
					t.Fatalf("received %d messages after cancel_after 1", n)
				}
			})

			t.Run("subscribe deadline", func(t *testing.T) {
				start := time.Now()
				obs := runAll(t, d, &pb.RunRequest{Target: target, DeadlineMs: 300, Scenario: &pb.RunRequest_Subscribe{Subscribe: &pb.Subscribe{
					Request: &eventsv1.SubscribeRequest{ClientId: unique("c"), Channel: unique("quiet")},
				}}})
				wantCode(t, obs, "DEADLINE_EXCEEDED")
				if el := time.Since(start); el < 300*time.Millisecond || el > 5*time.Second {
					t.Fatalf("deadline 300ms ended after %v", el)
				}
			})

			t.Run("subscribe bad request", func(t *testing.T) {
				obs := runAll(t, d, &pb.RunRequest{Target: target, Scenario: &pb.RunRequest_Subscribe{Subscribe: &pb.Subscribe{
					Request: &eventsv1.SubscribeRequest{},
				}}})
				wantCode(t, obs, "INVALID_ARGUMENT")
				if m := finished(obs).GetMessage(); m != "client_id is required" {
					t.Fatalf("message %q", m)
				}
			})

			t.Run("resilient subscribe", func(t *testing.T) {
				channel, ids := published(t)
				obs := runAll(t, d, &pb.RunRequest{Target: target, Scenario: &pb.RunRequest_Subscribe{Subscribe: &pb.Subscribe{
					Request:   &eventsv1.SubscribeRequest{ClientId: unique("c"), Channel: channel, LastEventId: ids[0]},
					Resilient: true, StopAfter: 2,
				}}})
				wantCode(t, obs, "OK")
				c := obs[0].GetConnected()
				if c == nil || c.GetAttempt() != 0 || c.GetLastEventId() != ids[0] {
					t.Fatalf("first observation %v, want connected attempt 0 from %s", obs[0], ids[0])
				}
				if n := len(received(obs)); n != 2 {
					t.Fatalf("received %d, want 2: %v", n, obs)
				}
			})

			t.Run("subscribe multiple", func(t *testing.T) {
				channel, ids := published(t)
				client := unique("c")
				obs := runAll(t, d, &pb.RunRequest{Target: target, DeadlineMs: 10000, Scenario: &pb.RunRequest_SubscribeMultiple{SubscribeMultiple: &pb.SubscribeMultiple{
					Steps: []*pb.SubscribeMultiple_Step{
						{Request: &eventsv1.SubscribeRequest{ClientId: client, Channel: channel, LastEventId: ids[0]}},
						{Request: &eventsv1.SubscribeRequest{ClientId: client, Channel: channel, EventTypes: []string{"order.*"}}, After: 2},
					},
					StopAfter: 2,
				}}})
				// At stop_after the client half-closes; the server then ends the stream.
				wantCode(t, obs, "OK")
				// The acknowledgement of step 2 may or may not beat the
				// half-close: not checked here.
				r := received(obs)
				if len(r) < 2 || r[0].GetId() != ids[1] || r[1].GetId() != ids[2] {
					t.Fatalf("received %v, want the 2 replayed events first", r)
				}
			})

			t.Run("query", func(t *testing.T) {
				obs := runAll(t, d, &pb.RunRequest{Target: target, Scenario: &pb.RunRequest_Query{Query: &pb.Query{
					Request: &updatesv1.QueryRequest{Query: "SELECT * FROM large_table WHERE id <= 5", BatchSize: 2},
				}}})
				wantCode(t, obs, "OK")
				r := received(obs)
				if len(r) != 3 || r[0].GetSequence() != 1 || r[2].GetSequence() != 3 || !strings.Contains(r[2].GetJson(), `"is_last":true`) {
					t.Fatalf("query results %v", r)
				}
			})

			t.Run("query read_delay and cancel_after", func(t *testing.T) {
				start := time.Now()
				obs := runAll(t, d, &pb.RunRequest{Target: target, ReadDelayMs: 100, CancelAfter: 3, Scenario: &pb.RunRequest_Query{Query: &pb.Query{
					Request: &updatesv1.QueryRequest{Query: "SELECT * FROM large_table", BatchSize: 10},
				}}})
				wantCode(t, obs, "CANCELLED")
				if n := len(received(obs)); n != 3 {
					t.Fatalf("received %d, want 3", n)
				}
				if el := time.Since(start); el < 300*time.Millisecond {
					t.Fatalf("3 reads with read_delay 100ms took %v", el)
				}
			})

			t.Run("query bad statement", func(t *testing.T) {
				obs := runAll(t, d, &pb.RunRequest{Target: target, Scenario: &pb.RunRequest_Query{Query: &pb.Query{
					Request: &updatesv1.QueryRequest{Query: "DELETE FROM large_table"},
				}}})
				wantCode(t, obs, "INVALID_ARGUMENT")
			})

			t.Run("watch job", func(t *testing.T) {
				obs := runAll(t, d, &pb.RunRequest{Target: target, Scenario: &pb.RunRequest_WatchJob{WatchJob: &pb.WatchJob{
					Start: &updatesv1.StartJobRequest{Name: "t", Steps: 3, StepDurationMs: 20},
				}}})
				wantCode(t, obs, "OK")
				r := received(obs)
				if len(r) == 0 || r[len(r)-1].GetType() != "JOB_STATUS_COMPLETED" || !strings.HasPrefix(r[0].GetId(), "job-") {
					t.Fatalf("job progress %v", r)
				}
			})

			t.Run("watch unknown job", func(t *testing.T) {
				obs := runAll(t, d, &pb.RunRequest{Target: target, Scenario: &pb.RunRequest_WatchJob{WatchJob: &pb.WatchJob{JobId: "nope"}}})
				wantCode(t, obs, "NOT_FOUND")
			})

			t.Run("updates", func(t *testing.T) {
				topic := unique("topic")
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				go func() { // publish until the subscriber has had its update
					for ctx.Err() == nil {
						_, _ = d.Run(ctx, &pb.RunRequest{Target: target, Scenario: &pb.RunRequest_Unary{Unary: &pb.Unary{
							Method: "/polystream.updates.v1.StreamService/PublishUpdate", RequestJson: fmt.Sprintf(`{"topic":%q,"message":"hi"}`, topic)}}})
						time.Sleep(50 * time.Millisecond)
					}
				}()
				obs := runAll(t, d, &pb.RunRequest{Target: target, DeadlineMs: 10000, Scenario: &pb.RunRequest_Updates{Updates: &pb.Updates{
					Request: &updatesv1.SubscribeRequest{Topics: []string{topic}, ClientId: unique("c")}, StopAfter: 1,
				}}})
				wantCode(t, obs, "OK")
				if r := received(obs); len(r) != 1 || r[0].GetSequence() != 1 {
					t.Fatalf("updates %v", r)
				}
			})

			t.Run("upload", func(t *testing.T) {
				obs := runAll(t, d, &pb.RunRequest{Target: target, Scenario: &pb.RunRequest_Upload{Upload: &pb.Upload{
					Count: 5, ContentBytes: 100, User: "u", Room: unique("room"),
				}}})
				skipUnimplemented(t, obs)
				wantCode(t, obs, "OK")
				var sent []int32
				for _, o := range obs {
					if s := o.GetSent(); s != nil {
						sent = append(sent, s.GetCount())
					}
				}
				if fmt.Sprint(sent) != "[1 2 3 4 5]" || !strings.Contains(finished(obs).GetResponseJson(), `"message_count":5`) {
					t.Fatalf("sent %v, response %s", sent, finished(obs).GetResponseJson())
				}
			})

			for _, all := range []bool{false, true} {
				t.Run(fmt.Sprintf("chat send_all_then_close=%v", all), func(t *testing.T) {
					obs := runAll(t, d, &pb.RunRequest{Target: target, DeadlineMs: 10000, Scenario: &pb.RunRequest_Chat{Chat: &pb.Chat{
						Count: 3, User: "u", Room: unique("room"), SendAllThenClose: all,
					}}})
					skipUnimplemented(t, obs)
					wantCode(t, obs, "OK")
					var echoes []string
					for _, r := range received(obs) {
						var m struct{ Content string }
						_ = json.Unmarshal([]byte(r.GetJson()), &m)
						if r.GetType() == "MESSAGE_TYPE_CHAT" {
							echoes = append(echoes, m.Content)
						}
					}
					if strings.Join(echoes, ",") != "1,2,3" {
						t.Fatalf("echoes %v in %v", echoes, obs)
					}
				})
			}

			t.Run("unary error", func(t *testing.T) {
				obs := runAll(t, d, &pb.RunRequest{Target: target, Scenario: &pb.RunRequest_Unary{Unary: &pb.Unary{
					Method: "/polystream.events.v1.EventService/Broadcast", RequestJson: `{}`,
				}}})
				wantCode(t, obs, "INVALID_ARGUMENT")
				if m := finished(obs).GetMessage(); m != "event is required" {
					t.Fatalf("message %q", m)
				}
			})
		})
	}
}

func skipUnimplemented(t *testing.T, obs []*pb.Observation) {
	if finished(obs).GetCode() == "UNIMPLEMENTED" {
		t.Skip("server does not implement this service yet")
	}
}

func TestMalformedRunRequests(t *testing.T) {
	d := startDriver(t)
	for name, req := range map[string]*pb.RunRequest{
		"no target":      {Scenario: &pb.RunRequest_Query{Query: &pb.Query{}}},
		"no scenario":    {Target: "127.0.0.1:1"},
		"unknown method": {Target: "127.0.0.1:1", Scenario: &pb.RunRequest_Unary{Unary: &pb.Unary{Method: "/x.Y/Z"}}},
		"streaming":      {Target: "127.0.0.1:1", Scenario: &pb.RunRequest_Unary{Unary: &pb.Unary{Method: "/polystream.events.v1.EventService/Subscribe"}}},
		"bad json": {Target: "127.0.0.1:1", Scenario: &pb.RunRequest_Unary{Unary: &pb.Unary{
			Method: "/polystream.events.v1.EventService/Broadcast", RequestJson: "{nope"}}},
	} {
		t.Run(name, func(t *testing.T) {
			stream, err := d.Run(context.Background(), req)
			if err == nil {
				_, err = stream.Recv()
			}
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("got %v, want INVALID_ARGUMENT", err)
			}
		})
	}
}

func TestFlattenDropsTransportHeaders(t *testing.T) {
	got := flatten(metadata.MD{"content-type": {"application/grpc"}, "grpc-accept-encoding": {"gzip"}, "x-a": {"1", "2"}})
	if len(got) != 1 || got["x-a"] != "1, 2" {
		t.Fatalf("flatten = %v", got)
	}
}
