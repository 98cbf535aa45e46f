#!/usr/bin/env bash
# Regenerates echopb/ from testbeds/bench/proto/switchyard/bench/v1/echo.proto: the message
# types (protoc-gen-go), the gRPC client (protoc-gen-go-grpc) and the REST handlers
# (protoc-gen-grpc-gateway). The generated files are committed, so building the benchmark needs
# Go alone; run this only after changing echo.proto. Needs protoc (Debian: protobuf-compiler)
# and Go; the three plugins are installed at pinned versions into a temporary GOBIN.
set -euo pipefail
here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
proto="$here/../proto"

PROTOC_GEN_GO=v1.36.12
PROTOC_GEN_GO_GRPC=v1.6.2
PROTOC_GEN_GRPC_GATEWAY=v2.33.0

command -v protoc >/dev/null || { echo "generate.sh: protoc is missing (Debian: apt-get install protobuf-compiler)" >&2; exit 1; }
gobin="$(mktemp -d)"
trap 'rm -rf "$gobin"' EXIT
GOBIN="$gobin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO"
GOBIN="$gobin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC"
GOBIN="$gobin" go install "github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway@$PROTOC_GEN_GRPC_GATEWAY"

# echo.proto names no Go package; the M options give one to it and map the (trimmed)
# google.api definitions onto the published Go package that registers the same extension.
pkg=switchyard/bench/grpcgateway/echopb
api=google.golang.org/genproto/googleapis/api/annotations
maps="Mswitchyard/bench/v1/echo.proto=$pkg,Mgoogle/api/annotations.proto=$api,Mgoogle/api/http.proto=$api"
PATH="$gobin:$PATH" protoc -I "$proto" \
  --go_out="$here/echopb" --go_opt=paths=source_relative,"$maps" \
  --go-grpc_out="$here/echopb" --go-grpc_opt=paths=source_relative,"$maps" \
  --grpc-gateway_out="$here/echopb" --grpc-gateway_opt=paths=source_relative,"$maps" \
  switchyard/bench/v1/echo.proto
# paths=source_relative keeps the proto's folders; the package is flat.
mv "$here"/echopb/switchyard/bench/v1/* "$here/echopb/"
rm -r "$here/echopb/switchyard"
echo "generate.sh: wrote $(cd "$here/echopb" && ls | tr '\n' ' ')" >&2
