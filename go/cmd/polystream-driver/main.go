// Command polystream-driver serves the conformance ClientDriver for the Go
// client (docs/images.md): polystream-driver --port 50052
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/polystream/polystream/go/conformancedriver"
	pb "github.com/polystream/polystream/go/gen/polystream/conformance/v1"
)

func main() {
	host := flag.String("host", envOr("POLYSTREAM_DRIVER_HOST", "0.0.0.0"), "address to listen on")
	port := flag.Int("port", envInt("POLYSTREAM_DRIVER_PORT", 50052), "port to listen on; 0 = a free port")
	faultName := flag.String("fault", os.Getenv("POLYSTREAM_DRIVER_FAULT"),
		"self-test only: make the driver deliberately defective (no-deadline, retry-all, no-backoff, blind)")
	flag.Parse()
	fault, err := conformancedriver.ParseFault(*faultName)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if fault != "" {
		fmt.Fprintf(os.Stderr, "%s (fault=%s)\n", conformancedriver.FaultBanner, fault)
	}

	lis, err := net.Listen("tcp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "polystream-driver:", err)
		os.Exit(1)
	}
	srv := grpc.NewServer()
	driver := conformancedriver.New()
	driver.Fault = fault
	pb.RegisterClientDriverServer(srv, driver)
	healthpb.RegisterHealthServer(srv, health.NewServer())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sig; srv.Stop() }()

	fmt.Printf("polystream driver listening on %s\n",
		net.JoinHostPort(*host, strconv.Itoa(lis.Addr().(*net.TCPAddr).Port)))
	if err := srv.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, "polystream-driver:", err)
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func envInt(key string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(key)); err == nil {
		return v
	}
	return def
}
