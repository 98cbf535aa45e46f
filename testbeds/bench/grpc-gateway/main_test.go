package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"switchyard/bench/grpcgateway/echopb"
)

// echoServer answers with the message it was sent; a message "stall" is answered only when
// the call's context ends, or after 5 s.
type echoServer struct {
	echopb.UnimplementedEchoServer
}

func (echoServer) Echo(ctx context.Context, req *echopb.EchoRequest) (*echopb.EchoReply, error) {
	if req.GetMessage() == "stall" {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Second):
		}
	}
	return &echopb.EchoReply{Message: req.GetMessage()}, nil
}

// start serves the Echo service on loopback and the gateway in front of it, with `c`'s bounds.
func start(t *testing.T, c Config) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	backend := grpc.NewServer()
	echopb.RegisterEchoServer(backend, echoServer{})
	go func() { _ = backend.Serve(lis) }()
	t.Cleanup(backend.Stop)

	c.Backend = lis.Addr().String()
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	conn, err := dial(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	handler, err := newHandler(context.Background(), c, conn)
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewUnstartedServer(handler)
	front.Config = newServer(c, handler)
	front.Start()
	t.Cleanup(front.Close)
	return front.URL + "/echo"
}

// body is `{"message":"xx…"}` of exactly `size` bytes.
func body(size int) []byte {
	return []byte(`{"message":"` + strings.Repeat("x", size-14) + `"}`)
}

func post(t *testing.T, url string, b []byte) (int, []byte) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(io.LimitReader(resp.Body, 1<<22))
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, got
}

func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y map[string]any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return x["message"] == y["message"] && len(x) == len(y)
}

func TestEchoesTheBenchmarkBodies(t *testing.T) {
	url := start(t, defaultConfig())
	for _, size := range []int{14, 100, 16384} {
		status, got := post(t, url, body(size))
		if status != http.StatusOK || !sameJSON(t, got, body(size)) {
			t.Fatalf("%d B: status %d, body %.80q", size, status, got)
		}
	}
}

func TestABodyPastTheBoundIsRefused(t *testing.T) {
	c := defaultConfig()
	c.BodyBytesMax = 1024
	url := start(t, c)
	if status, got := post(t, url, body(1024)); status != http.StatusOK || !sameJSON(t, got, body(1024)) {
		t.Fatalf("a body at the bound: status %d, body %.80q", status, got)
	}
	if status, _ := post(t, url, body(1025)); status == http.StatusOK {
		t.Fatalf("a body one byte past the bound was answered %d", status)
	}
}

func TestARequestPastItsDeadlineIsAnswered504(t *testing.T) {
	c := defaultConfig()
	c.RequestTimeout = 200 * time.Millisecond
	url := start(t, c)
	status, got := post(t, url, []byte(`{"message":"stall"}`))
	if status != http.StatusGatewayTimeout {
		t.Fatalf("a stalled call: status %d, body %.80q", status, got)
	}
}

func TestBadFlagsAreRefused(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"-backend", "nowhere"},
		{"-backend", "127.0.0.1:1", "-body-bytes-max", "0"},
		{"-backend", "127.0.0.1:1", "-body-bytes-max", "100000000"},
		{"-backend", "127.0.0.1:1", "-request-timeout", "0s"},
		{"-backend", "127.0.0.1:1", "extra"},
		{"-backend", "127.0.0.1:1", "-no-such-flag"},
	} {
		if _, _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q was accepted", args)
		}
	}
	c, version, err := parseFlags([]string{"-backend", "127.0.0.1:1"}, io.Discard)
	if err != nil || version || c.BodyBytesMax != 1<<20 {
		t.Fatalf("the defaults: %+v %v %v", c, version, err)
	}
}
