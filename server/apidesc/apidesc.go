// Package apidesc serves gRPC reflection with the API's comments. The
// descriptors protoc-gen-go embeds in gen/ carry none, so reflection built
// on them leaves `grpcurl describe` bare; api.binpb, which `make generate`
// builds from proto/api with buf (source info included), holds them.
package apidesc

import (
	_ "embed"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/reflection"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

//go:embed api.binpb
var image []byte

// Files returns the API's files (and those they import) with their
// comments.
func Files() (*protoregistry.Files, error) {
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(image, &set); err != nil {
		return nil, fmt.Errorf("the API's descriptors: %w", err)
	}
	files, err := protodesc.NewFiles(&set)
	if err != nil {
		return nil, fmt.Errorf("the API's descriptors: %w", err)
	}
	return files, nil
}

// RegisterReflection registers gRPC reflection (v1 and v1alpha) on gs,
// answering from the API's files with their comments, and from the
// descriptors linked into the binary for anything else (health).
func RegisterReflection(gs *grpc.Server) error {
	files, err := Files()
	if err != nil {
		return err
	}
	opts := reflection.ServerOptions{Services: gs, DescriptorResolver: resolvers{files, protoregistry.GlobalFiles}, ExtensionResolver: protoregistry.GlobalTypes}
	reflectionv1.RegisterServerReflectionServer(gs, reflection.NewServerV1(opts))
	reflectionv1alpha.RegisterServerReflectionServer(gs, reflection.NewServer(opts))
	return nil
}

// resolvers asks each resolver in turn.
type resolvers []protodesc.Resolver

func (rs resolvers) FindFileByPath(path string) (protoreflect.FileDescriptor, error) {
	for _, r := range rs {
		if fd, err := r.FindFileByPath(path); err == nil {
			return fd, nil
		} else if !errors.Is(err, protoregistry.NotFound) {
			return nil, err
		}
	}
	return nil, protoregistry.NotFound
}

func (rs resolvers) FindDescriptorByName(name protoreflect.FullName) (protoreflect.Descriptor, error) {
	for _, r := range rs {
		if d, err := r.FindDescriptorByName(name); err == nil {
			return d, nil
		} else if !errors.Is(err, protoregistry.NotFound) {
			return nil, err
		}
	}
	return nil, protoregistry.NotFound
}
