package conformancedriver

import (
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	pb "github.com/polystream/polystream/go/gen/polystream/conformance/v1"

	// The services a unary call may name, registered in protoregistry.
	_ "github.com/polystream/polystream/go/gen/polystream/chat/v1"
	_ "github.com/polystream/polystream/go/gen/polystream/events/v1"
	_ "github.com/polystream/polystream/go/gen/polystream/updates/v1"
)

// unary calls any unary method by its full name ("/pkg.Service/Method"), the
// request given in protobuf JSON; the response is reported in finished.
func (r *run) unary(s *pb.Unary) error {
	method, err := findMethod(s.GetMethod())
	if err != nil {
		return err
	}
	in, out := newMessage(method.Input()), newMessage(method.Output())
	if err := protojson.Unmarshal([]byte(orEmptyObject(s.GetRequestJson())), in); err != nil {
		return status.Errorf(codes.InvalidArgument, "request_json for %s: %v", method.Input().FullName(), err)
	}
	var header, trailer metadata.MD
	err = r.conn.Invoke(r.ctx, s.GetMethod(), in, out, grpc.Header(&header), grpc.Trailer(&trailer))
	return r.finish(err, header, trailer, out)
}

// findMethod resolves "/pkg.Service/Method" to a unary method descriptor.
func findMethod(name string) (protoreflect.MethodDescriptor, error) {
	service, method, ok := strings.Cut(strings.TrimPrefix(name, "/"), "/")
	if !ok || service == "" || method == "" {
		return nil, status.Errorf(codes.InvalidArgument, "method %q: want /package.Service/Method", name)
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
	sd, isService := d.(protoreflect.ServiceDescriptor)
	if err != nil || !isService {
		return nil, status.Errorf(codes.InvalidArgument, "method %q: unknown service %s", name, service)
	}
	md := sd.Methods().ByName(protoreflect.Name(method))
	if md == nil {
		return nil, status.Errorf(codes.InvalidArgument, "method %q: %s has no method %s", name, service, method)
	}
	if md.IsStreamingClient() || md.IsStreamingServer() {
		return nil, status.Errorf(codes.InvalidArgument, "method %q is streaming; unary takes unary methods only", name)
	}
	return md, nil
}

// newMessage is the generated type when registered, else a dynamic message.
func newMessage(d protoreflect.MessageDescriptor) proto.Message {
	if mt, err := protoregistry.GlobalTypes.FindMessageByName(d.FullName()); err == nil {
		return mt.New().Interface()
	}
	return dynamicpb.NewMessage(d)
}

func orEmptyObject(s string) string {
	if strings.TrimSpace(s) == "" {
		return "{}"
	}
	return s
}
