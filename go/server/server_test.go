package server

import (
	"bufio"
	"context"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/polystream/polystream/go/chat"
	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testConfig(t *testing.T) Config {
	cfg := DefaultConfig()
	cfg.Port = 0
	cfg.DataDir = t.TempDir()
	cfg.ShutdownGrace = 2 * time.Second
	return cfg
}

func startServer(t *testing.T, cfg Config) (*Server, *grpctest.Output) {
	t.Helper()
	logs := &grpctest.Output{}
	srv, err := Start(cfg, logs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown() })
	return srv, logs
}

// runListening starts Run(ctx, cfg) with stdout on a pipe and returns the
// first stdout line, a reader of the rest of stdout (it ends when Run has
// returned), and Run's result.
func runListening(t *testing.T, ctx context.Context, cfg Config) (line string, rest io.Reader, done <-chan error) {
	t.Helper()
	stdoutR, stdoutW := io.Pipe()
	result := make(chan error, 1)
	go func() {
		result <- Run(ctx, cfg, stdoutW)
		stdoutW.Close()
	}()
	r := bufio.NewReader(stdoutR)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return line, r, result
}

func TestHealthServingForEveryService(t *testing.T) {
	srv, _ := startServer(t, testConfig(t))
	health := healthpb.NewHealthClient(grpctest.Dial(t, srv.Addr()))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, name := range append([]string{""}, serviceNames...) {
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: name})
		if err != nil {
			t.Fatalf("Check(%q): %v", name, err)
		}
		if resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Check(%q) = %v, want SERVING", name, resp.Status)
		}
	}
	_, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: "no.such.Service"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("Check of an unknown service: %v, want NOT_FOUND", err)
	}
}

func TestReflectionListsEveryService(t *testing.T) {
	srv, _ := startServer(t, testConfig(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := reflectionpb.NewServerReflectionClient(grpctest.Dial(t, srv.Addr())).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	stream.CloseSend()
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.Name)
	}
	want := append([]string{"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}, serviceNames...)
	for _, name := range want {
		if !slices.Contains(names, name) {
			t.Errorf("reflection lists %v, missing %s", names, name)
		}
	}
}

// A long-lived stream (health Watch) sees NOT_SERVING, then ends with
// UNAVAILABLE "server is shutting down", and shutdown stays within its bound.
func TestShutdownEndsStreamsWithUnavailable(t *testing.T) {
	cfg := testConfig(t)
	srv, logs := startServer(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	watch, err := healthpb.NewHealthClient(grpctest.Dial(t, srv.Addr())).Watch(ctx, &healthpb.HealthCheckRequest{Service: serviceNames[0]})
	if err != nil {
		t.Fatal(err)
	}
	first, err := watch.Recv()
	if err != nil || first.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first Watch message: %v, %v; want SERVING", first, err)
	}

	began := time.Now()
	shutdownDone := make(chan error, 1)
	go func() { shutdownDone <- srv.Shutdown() }()

	var last error
	sawNotServing := false
	for {
		resp, err := watch.Recv()
		if err != nil {
			last = err
			break
		}
		sawNotServing = sawNotServing || resp.Status == healthpb.HealthCheckResponse_NOT_SERVING
	}
	if !sawNotServing {
		t.Error("the Watch stream never reported NOT_SERVING")
	}
	if st := status.Convert(last); st.Code() != codes.Unavailable || st.Message() != ShuttingDownMessage {
		t.Errorf("stream ended with %v, want UNAVAILABLE %q", last, ShuttingDownMessage)
	}
	if err := <-shutdownDone; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if took := time.Since(began); took > cfg.ShutdownGrace+time.Second {
		t.Errorf("shutdown took %v, more than grace+1s", took)
	}
	if !strings.Contains(logs.String(), `msg=rpc service=server method=/grpc.health.v1.Health/Watch code=UNAVAILABLE`) {
		t.Errorf("no rpc record for the Watch stream in the log:\n%s", logs)
	}
}

func TestRPCsAreLoggedWithMethodAndCode(t *testing.T) {
	srv, logs := startServer(t, testConfig(t))
	health := healthpb.NewHealthClient(grpctest.Dial(t, srv.Addr()))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	health.Check(ctx, &healthpb.HealthCheckRequest{})
	health.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"})
	srv.Shutdown()
	for _, want := range []string{
		"level=INFO msg=rpc service=server method=/grpc.health.v1.Health/Check code=OK",
		"level=INFO msg=rpc service=server method=/grpc.health.v1.Health/Check code=NOT_FOUND",
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

func TestRunPrintsListeningLineAndStopsOnCancel(t *testing.T) {
	cfg := testConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	line, stdout, done := runListening(t, ctx, cfg)
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "polystream listening on ")
	if !ok {
		t.Fatalf("stdout line %q lacks the listening prefix", line)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" || port == "0" {
		t.Fatalf("listening on %q: want 127.0.0.1 and a real port (%v)", addr, err)
	}
	health := healthpb.NewHealthClient(grpctest.Dial(t, addr))
	if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(cfg.ShutdownGrace + time.Second):
		t.Fatal("Run did not return within grace+1s")
	}
	rest, _ := io.ReadAll(stdout)
	if len(rest) != 0 {
		t.Errorf("stdout has more than the listening line: %q", rest)
	}
}

func TestStartFailsOnBusyPort(t *testing.T) {
	first, _ := startServer(t, testConfig(t))
	_, port, _ := net.SplitHostPort(first.Addr())
	cfg := testConfig(t)
	cfg.Port = mustAtoi(t, port)
	if _, err := Start(cfg, io.Discard); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Start on a busy port: %v, want address already in use", err)
	}
}

func TestMessagesOverMaxSizeAreRefused(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxMessageSize = 1024
	srv, _ := startServer(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	events := eventsv1.NewEventServiceClient(grpctest.Dial(t, srv.Addr()))
	_, err := events.Broadcast(ctx, &eventsv1.BroadcastRequest{Event: &eventsv1.Event{Type: "big", Data: strings.Repeat("x", 2048)}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a 2 KiB message with --max-message-size 1024: %v, want RESOURCE_EXHAUSTED", err)
	}
	if _, err := events.Broadcast(ctx, &eventsv1.BroadcastRequest{Event: &eventsv1.Event{Type: "small"}}); err != nil {
		t.Fatalf("a small message: %v", err)
	}
}

func TestStatsCountRequestsAndActiveStreams(t *testing.T) {
	stats := &rpcStats{}
	stats.unary(context.Background(), nil, nil, func(context.Context, any) (any, error) { return nil, nil })
	var during chat.Stats
	stats.stream(nil, nil, nil, func(any, grpc.ServerStream) error {
		during = stats.snapshot()
		return nil
	})
	after := stats.snapshot()
	if during.Requests != 2 || during.ActiveStreams != 1 || after.ActiveStreams != 0 {
		t.Fatalf("during the stream %+v, after %+v; want 2 requests, 1 then 0 active streams", during, after)
	}
}

// With --max-concurrent-streams 1 a second call on the same connection
// waits for the first to end.
func TestMaxConcurrentStreamsQueuesExtraCalls(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxConcurrentStreams = 1
	srv, _ := startServer(t, cfg)
	health := healthpb.NewHealthClient(grpctest.Dial(t, srv.Addr()))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	watchCtx, endWatch := context.WithCancel(ctx)
	watch, err := health.Watch(watchCtx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if _, err := health.Check(short, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a second call while one stream is open: %v, want it to wait (DEADLINE_EXCEEDED)", err)
	}
	endWatch()
	if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("after the stream ended: %v", err)
	}
}
