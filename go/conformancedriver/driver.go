// Package conformancedriver serves the ClientDriver contract
// (proto/polystream/conformance/v1/driver.proto) for the Go client: the
// conformance harness sends one scenario per Run call, the driver performs it
// against the target server with grpc-go (or the resilient subscriber of
// go/client) and streams back what the client observed as it happens.
//
// Conventions shared with the Python driver (docs/images.md):
//   - Every streaming call reports connected{attempt 0} when its response
//     headers arrive, before the first received message.
//   - received.type is Event.type, the MessageType or JobStatus enum value name
//     (e.g. "MESSAGE_TYPE_CHAT"); received.json is protobuf JSON with proto
//     field names, compact.
//   - finished.code is the client's view: OK when the stream ended cleanly or
//     the client stopped it itself (stop_after, ping-pong done), CANCELLED after
//     cancel_after, DEADLINE_EXCEEDED after deadline_ms, the server's code
//     otherwise.
//   - A malformed RunRequest (no scenario, unknown method, bad JSON) ends Run
//     itself with INVALID_ARGUMENT; it is not a client observation.
package conformancedriver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/polystream/polystream/go/client"
	pb "github.com/polystream/polystream/go/gen/polystream/conformance/v1"
)

// Client keepalive defaults (docs/contract.md): a ping every 10 s, 5 s to answer,
// also without active streams.
const (
	DefaultKeepaliveTime    = 10 * time.Second
	DefaultKeepaliveTimeout = 5 * time.Second
)

// WindowSize is the client's fixed HTTP/2 receive window, per stream and per
// connection (HTTP/2's default; grpc-go's minimum).
const WindowSize = 64 * 1024

// closeDelay is how long a Run's connection outlives the Run.
const closeDelay = time.Second

// Driver implements conformancev1.ClientDriverServer.
type Driver struct {
	pb.UnimplementedClientDriverServer
	// Fault, when set, makes the driver deliberately defective (self-test only).
	Fault Fault
}

// New returns a driver.
func New() *Driver { return &Driver{} }

// dialOptions are the client's connection settings: the contract's
// keepalive (or the scenario's keepalive_time_ms), none with the blind fault.
func (d *Driver) dialOptions(req *pb.RunRequest) []grpc.DialOption {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Fixed flow-control windows (no BDP growth), as in the Python driver:
		// how far a server can run ahead of a slow or cancelling client does
		// not depend on timing.
		grpc.WithStaticStreamWindowSize(WindowSize),
		grpc.WithStaticConnWindowSize(WindowSize),
	}
	if d.Fault == FaultBlind {
		return opts // grpc-go's default: no keepalive pings at all
	}
	ka := DefaultKeepaliveTime
	if req.GetKeepaliveTimeMs() > 0 {
		ka = time.Duration(req.GetKeepaliveTimeMs()) * time.Millisecond // grpc-go raises values under 10 s to 10 s
	}
	return append(opts, grpc.WithKeepaliveParams(keepalive.ClientParameters{
		Time: ka, Timeout: DefaultKeepaliveTimeout, PermitWithoutStream: true}))
}

// errStopped ends a receive loop when the client stops the call on purpose
// (stop_after reached, ping-pong done): the finished code is then OK.
var errStopped = errors.New("stopped by the client")

// run is one Run call: its request, its output stream and the client's call.
type run struct {
	req    *pb.RunRequest
	fault  Fault
	out    pb.ClientDriver_RunServer
	conn   *grpc.ClientConn
	ctx    context.Context // the client's call: deadline and request headers
	cancel context.CancelFunc

	mu        sync.Mutex // out.Send may be called from callbacks
	sendErr   error
	received  int32 // messages received (for cancel_after)
	cancelled bool  // cancel_after fired: later messages are not reported
	header    metadata.MD
}

// Run performs one scenario; the last observation is `finished`.
func (d *Driver) Run(req *pb.RunRequest, out pb.ClientDriver_RunServer) error {
	if req.GetTarget() == "" {
		return status.Error(codes.InvalidArgument, "target is required")
	}
	conn, err := grpc.NewClient(req.GetTarget(), d.dialOptions(req)...)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "target %q: %v", req.GetTarget(), err)
	}
	// Closed a moment after Run ends, so that a cancellation (RST_STREAM) is
	// on the wire before the connection goes: the server must see the call
	// cancelled, not the transport closing.
	defer time.AfterFunc(closeDelay, func() { _ = conn.Close() })

	// The client's call ends when Run is cancelled, so cancelling Run cancels it.
	ctx := out.Context()
	var cancelDeadline context.CancelFunc = func() {}
	if ms := req.GetDeadlineMs(); ms > 0 && d.Fault != FaultNoDeadline {
		ctx, cancelDeadline = context.WithTimeout(ctx, time.Duration(ms)*time.Millisecond)
	}
	defer cancelDeadline()
	if len(req.GetMetadata()) > 0 {
		ctx = metadata.NewOutgoingContext(ctx, metadata.New(req.GetMetadata()))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := &run{req: req, fault: d.Fault, out: out, conn: conn, ctx: ctx, cancel: cancel}

	switch s := req.GetScenario().(type) {
	case *pb.RunRequest_Subscribe:
		if s.Subscribe.GetResilient() {
			err = r.subscribeResilient(s.Subscribe)
		} else {
			err = r.subscribe(s.Subscribe)
		}
	case *pb.RunRequest_SubscribeMultiple:
		err = r.subscribeMultiple(s.SubscribeMultiple)
	case *pb.RunRequest_Updates:
		err = r.updates(s.Updates)
	case *pb.RunRequest_Query:
		err = r.query(s.Query)
	case *pb.RunRequest_WatchJob:
		err = r.watchJob(s.WatchJob)
	case *pb.RunRequest_Upload:
		err = r.upload(s.Upload)
	case *pb.RunRequest_Chat:
		err = r.chat(s.Chat)
	case *pb.RunRequest_Unary:
		err = r.unary(s.Unary)
	default:
		return status.Error(codes.InvalidArgument, "a scenario is required")
	}
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sendErr
}

// emit sends one observation stamped with the client's clock.
func (r *run) emit(o *pb.Observation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// Stamped under the lock, so the sender's and the receiver's goroutines
	// report in the order of their times.
	o.AtUnixNanos = time.Now().UnixNano()
	if r.sendErr == nil {
		r.sendErr = r.out.Send(o)
	}
}

func (r *run) emitReceived(m proto.Message, seq uint64, id, typ string) {
	r.emit(&pb.Observation{Kind: &pb.Observation_Received{Received: &pb.Received{
		Sequence: seq, Id: id, Type: typ, Json: toJSON(m)}}})
}

func (r *run) emitSent(count int32) {
	r.emit(&pb.Observation{Kind: &pb.Observation_Sent{Sent: &pb.Sent{Count: count}}})
}

func (r *run) emitConnected(attempt int32, lastEventID string) {
	r.emit(&pb.Observation{Kind: &pb.Observation_Connected{Connected: &pb.Connected{
		Attempt: attempt, LastEventId: lastEventID}}})
}

// finish reports how the call ended. err is the call's final error (nil, io.EOF
// and errStopped mean OK); response is a unary or client-stream response.
func (r *run) finish(err error, header, trailer metadata.MD, response proto.Message) error {
	f := &pb.Finished{Code: "OK", Headers: flatten(header), Trailers: flatten(trailer)}
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, errStopped) {
		st := status.Convert(err)
		f.Code, f.Message = client.CodeName(st.Code()), st.Message()
	}
	if response != nil && f.Code == "OK" {
		f.ResponseJson = toJSON(response)
	}
	r.emit(&pb.Observation{Kind: &pb.Observation_Finished{Finished: f}})
	return nil
}

// watchHeader reports connected{attempt 0} when the stream's response headers
// arrive; the returned wait makes the first received message come after it.
func (r *run) watchHeader(cs grpc.ClientStream) (wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if md, err := cs.Header(); err == nil && md != nil {
			r.header = md
			r.emitConnected(0, "")
		}
	}()
	return func() { <-done }
}

// recvLoop reads a server stream until it ends: read_delay_ms before each
// read, a received observation per message, cancel_after. describe gives a
// message's sequence, id and type; stop (may be nil) ends the loop with
// errStopped after the message that satisfies it.
func recvLoop[T proto.Message](r *run, cs grpc.ClientStream, newMsg func() T,
	describe func(T) (uint64, string, string), stop func(T) bool) error {
	waitHeader := r.watchHeader(cs)
	first := true
	for {
		if d := r.req.GetReadDelayMs(); d > 0 && !r.cancelled {
			select {
			case <-time.After(time.Duration(d) * time.Millisecond):
			case <-r.ctx.Done():
			}
		}
		m := newMsg()
		if err := cs.RecvMsg(m); err != nil {
			if first {
				waitHeader()
			}
			return err
		}
		if r.cancelled {
			continue // drained after cancel_after: not seen by the client
		}
		if first {
			waitHeader()
			first = false
		}
		seq, id, typ := describe(m)
		r.emitReceived(m, seq, id, typ)
		r.received++
		if n := r.req.GetCancelAfter(); n > 0 && r.received >= n {
			r.cancelled = true
			r.cancel()
			continue
		}
		if stop != nil && stop(m) {
			r.cancel()
			return errStopped
		}
	}
}

// finishStream reports the end of a stream with its headers and trailers.
func (r *run) finishStream(cs grpc.ClientStream, err error, response proto.Message) error {
	header := r.header
	if header == nil {
		header, _ = cs.Header()
	}
	var trailer metadata.MD
	if !errors.Is(err, errStopped) {
		trailer = cs.Trailer()
	}
	return r.finish(err, header, trailer, response)
}

var jsonOptions = protojson.MarshalOptions{UseProtoNames: true}

// toJSON is protobuf JSON with proto field names, without protojson's
// deliberately unstable whitespace.
func toJSON(m proto.Message) string {
	b, err := jsonOptions.Marshal(m)
	if err != nil {
		return ""
	}
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return string(b)
	}
	return buf.String()
}

// flatten turns metadata into a map; several values of one key are joined
// with ", " (HTTP's rule), in the order received. content-type and grpc-*
// keys belong to gRPC itself and are left out, so both drivers report the
// same application headers.
func flatten(md metadata.MD) map[string]string {
	out := make(map[string]string, len(md))
	for k, v := range md {
		if k == "content-type" || strings.HasPrefix(k, "grpc-") {
			continue
		}
		out[k] = strings.ToValidUTF8(strings.Join(v, ", "), "\uFFFD")
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
