package server

import (
	"errors"
	"io"
	"slices"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	eventsv1 "github.com/polystream/polystream/go/gen/polystream/events/v1"
	"github.com/polystream/polystream/go/internal/grpctest"
)

// echo is what one call got back: its status code and the echoed values.
type echo struct {
	call            string
	code            codes.Code
	header, trailer []string
}

// metadataCalls makes unary and streaming calls, OK and failing, of the
// events, health and reflection services with outgoing metadata md, and
// returns what came back in headers and trailers.
func metadataCalls(t *testing.T, addr string, md metadata.MD) []echo {
	t.Helper()
	conn := grpctest.Dial(t, addr)
	ctx := metadata.NewOutgoingContext(grpctest.Context(t), md)
	events := eventsv1.NewEventServiceClient(conn)
	var out []echo
	unary := func(call string, invoke func(...grpc.CallOption) error) {
		var header, trailer metadata.MD
		err := invoke(grpc.Header(&header), grpc.Trailer(&trailer))
		out = append(out, echo{call, status.Code(err), header.Get(RequestIDHeader), trailer.Get(EchoTrailerHeader)})
	}
	unary("health Check", func(o ...grpc.CallOption) error {
		_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, o...)
		return err
	})
	unary("Broadcast without event", func(o ...grpc.CallOption) error {
		_, err := events.Broadcast(ctx, &eventsv1.BroadcastRequest{}, o...)
		return err
	})
	// stream ends a stream by reading it to its end, then reads its metadata.
	stream := func(call string, s grpc.ClientStream, recv func() error) {
		err := recv()
		for err == nil {
			err = recv()
		}
		if errors.Is(err, io.EOF) {
			err = nil
		}
		header, herr := s.Header()
		if herr != nil && err == nil {
			t.Fatalf("%s: header: %v", call, herr)
		}
		out = append(out, echo{call, status.Code(err), header.Get(RequestIDHeader), s.Trailer().Get(EchoTrailerHeader)})
	}
	sub, err := events.Subscribe(ctx, &eventsv1.SubscribeRequest{ClientId: "m", HeartbeatInterval: -5})
	if err != nil {
		t.Fatal(err)
	}
	stream("Subscribe with a bad heartbeat", sub, func() error { _, err := sub.Recv(); return err })
	multi, err := events.SubscribeMultiple(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := multi.Send(&eventsv1.SubscribeRequest{ClientId: "m"}); err != nil {
		t.Fatal(err)
	}
	if _, err := multi.Header(); err != nil { // subscribed; the half-close ends it with OK
		t.Fatal(err)
	}
	multi.CloseSend()
	stream("SubscribeMultiple half-closed", multi, func() error { _, err := multi.Recv(); return err })
	refl, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := refl.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	refl.CloseSend()
	stream("reflection", refl, func() error { _, err := refl.Recv(); return err })
	return out
}

var wantCodes = map[string]codes.Code{
	"health Check":                   codes.OK,
	"Broadcast without event":        codes.InvalidArgument,
	"Subscribe with a bad heartbeat": codes.InvalidArgument,
	"SubscribeMultiple half-closed":  codes.OK,
	"reflection":                     codes.OK,
}

func TestMetadataIsEchoedOnEveryKindOfCall(t *testing.T) {
	srv, _ := startServer(t, testConfig(t))
	md := metadata.Pairs(RequestIDHeader, "req-1", RequestIDHeader, "req-2", EchoTrailerHeader, "tr-1", EchoTrailerHeader, "tr-2")
	for _, e := range metadataCalls(t, srv.Addr(), md) {
		if e.code != wantCodes[e.call] {
			t.Errorf("%s: %v, want %v", e.call, e.code, wantCodes[e.call])
		}
		// The first value only, in the header and the trailer respectively.
		if !slices.Equal(e.header, []string{"req-1"}) || !slices.Equal(e.trailer, []string{"tr-1"}) {
			t.Errorf("%s: header x-request-id %q, trailer x-echo-trailer %q; want [req-1], [tr-1]", e.call, e.header, e.trailer)
		}
	}
}

func TestMetadataAbsentHeadersAreNotEchoed(t *testing.T) {
	srv, _ := startServer(t, testConfig(t))
	for _, e := range metadataCalls(t, srv.Addr(), metadata.Pairs("x-other", "v")) {
		if e.code != wantCodes[e.call] || len(e.header) != 0 || len(e.trailer) != 0 {
			t.Errorf("%s: %v, header %q, trailer %q; want nothing echoed", e.call, e.code, e.header, e.trailer)
		}
	}
	// Only x-request-id: no trailer.
	for _, e := range metadataCalls(t, srv.Addr(), metadata.Pairs(RequestIDHeader, "only")) {
		if !slices.Equal(e.header, []string{"only"}) || len(e.trailer) != 0 {
			t.Errorf("%s: header %q, trailer %q; want [only] and nothing", e.call, e.header, e.trailer)
		}
	}
}

func TestFaultNoMetadataEchoesNothing(t *testing.T) {
	cfg := testConfig(t)
	cfg.Fault = FaultNoMetadata
	srv, _ := startServer(t, cfg)
	md := metadata.Pairs(RequestIDHeader, "req-1", EchoTrailerHeader, "tr-1")
	for _, e := range metadataCalls(t, srv.Addr(), md) {
		if e.code != wantCodes[e.call] || len(e.header) != 0 || len(e.trailer) != 0 {
			t.Errorf("%s: %v, header %q, trailer %q; want nothing echoed under no-metadata", e.call, e.code, e.header, e.trailer)
		}
	}
}

// The echo works alongside the other interceptors: with wrong-status the
// rewritten error still carries it.
func TestMetadataEchoedWithWrongStatus(t *testing.T) {
	cfg := testConfig(t)
	cfg.Fault = FaultWrongStatus
	srv, _ := startServer(t, cfg)
	md := metadata.Pairs(RequestIDHeader, "req-1", EchoTrailerHeader, "tr-1")
	for _, e := range metadataCalls(t, srv.Addr(), md) {
		if e.code != wantCodes[e.call] || !slices.Equal(e.header, []string{"req-1"}) || !slices.Equal(e.trailer, []string{"tr-1"}) {
			t.Errorf("%s: %v, header %q, trailer %q", e.call, e.code, e.header, e.trailer)
		}
	}
}

// A stream cut by graceful shutdown (UNAVAILABLE from the shutdown
// interceptor) still has its header echoed.
func TestMetadataEchoedOnAStreamEndedByShutdown(t *testing.T) {
	srv, _ := startServer(t, testConfig(t))
	ctx := metadata.NewOutgoingContext(grpctest.Context(t), metadata.Pairs(RequestIDHeader, "w", EchoTrailerHeader, "wt"))
	watch, err := healthpb.NewHealthClient(grpctest.Dial(t, srv.Addr())).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatal(err)
	}
	go srv.Shutdown()
	for err == nil {
		_, err = watch.Recv()
	}
	grpctest.WantStatus(t, err, codes.Unavailable, ShuttingDownMessage)
	header, _ := watch.Header()
	if got := header.Get(RequestIDHeader); !slices.Equal(got, []string{"w"}) {
		t.Errorf("header x-request-id %q, want [w]", got)
	}
	if got := watch.Trailer().Get(EchoTrailerHeader); !slices.Equal(got, []string{"wt"}) {
		t.Errorf("trailer x-echo-trailer %q, want [wt]", got)
	}
}
