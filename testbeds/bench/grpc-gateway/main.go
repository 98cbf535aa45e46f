// Command bench-grpc-gateway is the grpc-gateway target of the proxy benchmark
// (testbeds/bench/proxies.py): grpc-gateway v2 serving `POST /echo` with `{"message": "..."}`
// as the typed gRPC call `switchyard.bench.v1.Echo/Echo` on the benchmark's backend, and the
// reply back as the same JSON. It does what Envoy's gRPC-JSON transcoder does in the same
// benchmark, with the handlers that protoc-gen-grpc-gateway generated from echo.proto (echopb/).
//
//	bench-grpc-gateway -backend 127.0.0.1:50051 [-listen 127.0.0.1:0]
//	bench-grpc-gateway -version
//
// Once listening it prints `grpc-gateway listening on <addr>` on stdout. It stops on SIGTERM
// or SIGINT, letting requests in flight finish for up to 5 s. The benchmark runs it with
// GOMAXPROCS=1, pinned to one core, as it runs Envoy with --concurrency 1 and nginx with one
// worker.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"switchyard/bench/grpcgateway/echopb"
)

// Config holds the bounds of the server; every field has a safe default (defaultConfig).
type Config struct {
	Listen  string // host:port to listen on
	Backend string // host:port of the gRPC Echo service
	// The largest request body read; a larger one is refused. 1 MiB, like the gateway's
	// default body limit and the nginx target's client_max_body_size.
	BodyBytesMax int64
	// The deadline of one request, the gRPC call included (grpc-gateway's DefaultContextTimeout
	// applies it when the client sends no grpc-timeout header).
	RequestTimeout time.Duration
	// Bounds on the HTTP/1.1 connection: the head must arrive within HeaderTimeout, the whole
	// request within ReadTimeout, and an idle kept-alive connection is closed after IdleTimeout.
	HeaderBytesMax int
	HeaderTimeout  time.Duration
	ReadTimeout    time.Duration
	WriteTimeout   time.Duration
	IdleTimeout    time.Duration
}

func defaultConfig() Config {
	return Config{
		Listen:         "127.0.0.1:0",
		BodyBytesMax:   1 << 20,
		RequestTimeout: 10 * time.Second,
		HeaderBytesMax: 64 << 10,
		HeaderTimeout:  5 * time.Second,
		ReadTimeout:    30 * time.Second,
		WriteTimeout:   30 * time.Second,
		IdleTimeout:    60 * time.Second,
	}
}

// validate names the first flag whose value is out of range.
func (c Config) validate() error {
	for _, hp := range []struct{ flag, value string }{{"-listen", c.Listen}, {"-backend", c.Backend}} {
		if _, _, err := net.SplitHostPort(hp.value); err != nil {
			return fmt.Errorf("%s %q: want host:port (%v)", hp.flag, hp.value, err)
		}
	}
	if c.BodyBytesMax < 1 || c.BodyBytesMax > 64<<20 {
		return fmt.Errorf("-body-bytes-max %d: want 1 to %d", c.BodyBytesMax, 64<<20)
	}
	if c.RequestTimeout < time.Millisecond || c.RequestTimeout > 10*time.Minute {
		return fmt.Errorf("-request-timeout %v: want 1ms to 10m", c.RequestTimeout)
	}
	return nil
}

// parseFlags reads the command line into a Config; it reports -version apart.
func parseFlags(args []string, out io.Writer) (Config, bool, error) {
	c := defaultConfig()
	fs := flag.NewFlagSet("bench-grpc-gateway", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.Listen, "listen", c.Listen, "host:port to listen on (port 0: any free port)")
	fs.StringVar(&c.Backend, "backend", c.Backend, "host:port of the gRPC Echo service (required)")
	fs.Int64Var(&c.BodyBytesMax, "body-bytes-max", c.BodyBytesMax, "largest request body accepted, bytes")
	fs.DurationVar(&c.RequestTimeout, "request-timeout", c.RequestTimeout, "deadline of one request")
	version := fs.Bool("version", false, "print the versions of Go and of the gRPC modules, and exit")
	if err := fs.Parse(args); err != nil {
		return c, false, err
	}
	if fs.NArg() != 0 {
		return c, false, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *version {
		return c, true, nil
	}
	return c, false, c.validate()
}

// versions says which grpc-gateway, grpc-go and protobuf-go the binary was built with.
func versions() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "bench-grpc-gateway (no build information)"
	}
	parts := []string{"bench-grpc-gateway", info.GoVersion}
	for _, dep := range info.Deps {
		switch dep.Path {
		case "github.com/grpc-ecosystem/grpc-gateway/v2":
			parts = append(parts, "grpc-gateway "+dep.Version)
		case "google.golang.org/grpc":
			parts = append(parts, "grpc-go "+dep.Version)
		case "google.golang.org/protobuf":
			parts = append(parts, "protobuf-go "+dep.Version)
		}
	}
	return strings.Join(parts, " ")
}

// newHandler is grpc-gateway's mux with the generated Echo handlers, calling `conn`, behind
// the body bound.
func newHandler(ctx context.Context, c Config, conn *grpc.ClientConn) (http.Handler, error) {
	// grpc-gateway applies this deadline to every request that carries no grpc-timeout
	// header. It is a package variable: one Config per process.
	runtime.DefaultContextTimeout = c.RequestTimeout
	mux := runtime.NewServeMux()
	if err := echopb.RegisterEchoHandler(ctx, mux, conn); err != nil {
		return nil, err
	}
	// A body past the bound fails its read, which grpc-gateway answers with an error status.
	return http.MaxBytesHandler(mux, c.BodyBytesMax), nil
}

func newServer(c Config, handler http.Handler) *http.Server {
	return &http.Server{
		Handler:           handler,
		MaxHeaderBytes:    c.HeaderBytesMax,
		ReadHeaderTimeout: c.HeaderTimeout,
		ReadTimeout:       c.ReadTimeout,
		WriteTimeout:      c.WriteTimeout,
		IdleTimeout:       c.IdleTimeout,
	}
}

func dial(c Config) (*grpc.ClientConn, error) {
	return grpc.NewClient(
		c.Backend,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// An echo's reply is as large as its request, plus the message's framing.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(int(c.BodyBytesMax)+4096)),
	)
}

func run(args []string, stdout, stderr io.Writer) error {
	c, version, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if version {
		fmt.Fprintln(stdout, versions())
		return nil
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	conn, err := dial(c)
	if err != nil {
		return fmt.Errorf("backend %s: %w", c.Backend, err)
	}
	defer conn.Close()
	handler, err := newHandler(ctx, c, conn)
	if err != nil {
		return err
	}
	listener, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", c.Listen, err)
	}
	srv := newServer(c, handler)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(listener) }()
	fmt.Fprintf(stdout, "grpc-gateway listening on %s\n", listener.Addr())

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(os.Stderr, "bench-grpc-gateway: %v\n", err)
		os.Exit(2)
	}
}
