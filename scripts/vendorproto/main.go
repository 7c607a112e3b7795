// Command vendorproto writes a FileDescriptorSet holding grpc.health.v1 and
// grpc.reflection.v1 as grpc-go compiled them, renamed under polystream/vendor/
// so protoc can make Python stubs for them: Debian's grpcio ships neither
// module, and their usual path (grpc/...) would shadow the grpc package.
// The proto package names, and so the wire names, are unchanged.
package main

import (
	"fmt"
	"os"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: vendorproto OUT.pb")
		os.Exit(2)
	}
	set := &descriptorpb.FileDescriptorSet{}
	for _, v := range []struct {
		name string
		fd   protoreflect.FileDescriptor
	}{
		{"polystream/vendor/grpc_health_v1.proto", healthpb.File_grpc_health_v1_health_proto},
		{"polystream/vendor/grpc_reflection_v1.proto", reflectionpb.File_grpc_reflection_v1_reflection_proto},
	} {
		fdp := protodesc.ToFileDescriptorProto(v.fd)
		fdp.Name = proto.String(v.name)
		fdp.Options = nil // drop go_package/java options that point elsewhere
		set.File = append(set.File, fdp)
	}
	out, err := proto.MarshalOptions{Deterministic: true}.Marshal(set)
	if err == nil {
		err = os.WriteFile(os.Args[1], out, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
