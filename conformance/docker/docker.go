// Package docker starts the images under test on a private network with
// testcontainers-go and injects faults through the Docker API: stop/start,
// kill, pause/unpause, network disconnect/connect. All ports are published on
// 127.0.0.1 only; containers reach each other by alias on the run's network.
//
// The reaper (Ryuk) is off (TESTCONTAINERS_RYUK_DISABLED=true), so this
// package removes what it created itself: Env.Close, also on failure or
// interrupt (the caller defers it and cancels on SIGINT).
package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tcnetwork "github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// LabelKey marks everything the harness creates, so a leftover from a killed
// run can be found: docker ps -a --filter label=polystream.conformance.
const LabelKey = "polystream.conformance"

// Env is one run's private network and the containers on it.
type Env struct {
	RunID   string
	network *testcontainers.DockerNetwork
	cli     *testcontainers.DockerClient

	subnet netip.Prefix

	mu         sync.Mutex
	nextIP     int
	containers []*Container
}

// NewEnv creates the run's network.
func NewEnv(ctx context.Context, runID string) (*Env, error) {
	os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
	cli, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	// A subnet of our own, so every container keeps a fixed address across
	// stop/start: gRPC clients re-resolve a name at most every 30 s, so a
	// server that came back on another address would look down for that long.
	var nw *testcontainers.DockerNetwork
	var subnet netip.Prefix
	for try := 0; ; try++ {
		subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 213, byte(rand.IntN(256)), 0}), 24)
		nw, err = tcnetwork.New(ctx, tcnetwork.WithLabels(map[string]string{LabelKey: runID}),
			tcnetwork.WithIPAM(&network.IPAM{Driver: "default", Config: []network.IPAMConfig{{Subnet: subnet}}}))
		if err == nil {
			break
		}
		if try == 20 {
			cli.Close()
			return nil, fmt.Errorf("create network: %w", err)
		}
	}
	return &Env{RunID: runID, network: nw, cli: cli, subnet: subnet, nextIP: 10}, nil
}

// allocIP returns the next fixed address of the run's subnet.
func (e *Env) allocIP() netip.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	b := e.subnet.Addr().As4()
	b[3] = byte(e.nextIP)
	e.nextIP++
	if e.nextIP > 250 {
		e.nextIP = 10 // containers come and go; 240 live at once is plenty
	}
	return netip.AddrFrom4(b)
}

// NetworkName is the run's network.
func (e *Env) NetworkName() string { return e.network.Name }

// Close removes every container of the run and its network.
func (e *Env) Close(ctx context.Context) error {
	e.mu.Lock()
	cs := e.containers
	e.containers = nil
	e.mu.Unlock()
	var errs []error
	for _, c := range cs {
		errs = append(errs, c.Terminate(ctx))
	}
	errs = append(errs, e.network.Remove(ctx))
	e.cli.Close()
	return errors.Join(errs...)
}

// Spec is a container to start.
type Spec struct {
	Image string
	Cmd   []string
	Env   map[string]string
	// Alias on the run's network, e.g. "server".
	Alias string
	// Port the process listens on inside the container.
	Port int
	// Ready bounds the wait for the gRPC port to answer.
	Ready time.Duration
}

// Container is one started container.
type Container struct {
	env  *Env
	spec Spec
	c    testcontainers.Container
	ip   netip.Addr
	// Logs keeps the container's output for reports.
	mu     sync.Mutex
	paused bool
	gone   bool
}

// Start runs a container on the run's network and waits until its gRPC port
// answers.
func (e *Env) Start(ctx context.Context, spec Spec) (*Container, error) {
	if spec.Ready == 0 {
		spec.Ready = 30 * time.Second
	}
	ip := e.allocIP()
	port := fmt.Sprintf("%d/tcp", spec.Port)
	nport, err := network.ParsePort(port)
	if err != nil {
		return nil, err
	}
	opts := []testcontainers.ContainerCustomizer{
		testcontainers.WithExposedPorts(port),
		testcontainers.WithLabels(map[string]string{LabelKey: e.RunID}),
		testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
			hc.PortBindings = network.PortMap{nport: {{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: "0"}}}
		}),
		tcnetwork.WithNetwork([]string{spec.Alias}, e.network),
		testcontainers.WithEndpointSettingsModifier(func(m map[string]*network.EndpointSettings) {
			if es := m[e.network.Name]; es != nil {
				es.IPAMConfig = &network.EndpointIPAMConfig{IPv4Address: ip}
			}
		}),
		// Only "the port is published": readiness is checked over gRPC below,
		// since a scratch image has no shell for the internal port check.
		testcontainers.WithWaitStrategy(wait.ForMappedPort(port).WithStartupTimeout(spec.Ready)),
	}
	if len(spec.Cmd) > 0 {
		opts = append(opts, testcontainers.WithCmd(spec.Cmd...))
	}
	if len(spec.Env) > 0 {
		opts = append(opts, testcontainers.WithEnv(spec.Env))
	}
	tc, err := testcontainers.Run(ctx, spec.Image, opts...)
	if tc != nil {
		c := &Container{env: e, spec: spec, c: tc, ip: ip}
		e.mu.Lock()
		e.containers = append(e.containers, c)
		e.mu.Unlock()
		if err != nil {
			return nil, fmt.Errorf("start %s (%s): %w\n%s", spec.Alias, spec.Image, err, c.Logs(ctx))
		}
		if err := c.WaitReady(ctx, spec.Ready); err != nil {
			return nil, fmt.Errorf("%s (%s): %w\n%s", spec.Alias, spec.Image, err, c.Logs(ctx))
		}
		return c, nil
	}
	return nil, fmt.Errorf("start %s (%s): %w", spec.Alias, spec.Image, err)
}

// ID is the Docker container id.
func (c *Container) ID() string { return c.c.GetContainerID() }

// Alias is the container's name on the run's network.
func (c *Container) Alias() string { return c.spec.Alias }

// Target is how other containers dial it: "alias:port".
func (c *Container) Target() string { return fmt.Sprintf("%s:%d", c.spec.Alias, c.spec.Port) }

// Addr is 127.0.0.1:<published port>, read again on every call: Docker picks
// a new host port after stop/start.
func (c *Container) Addr(ctx context.Context) (string, error) {
	res, err := c.env.cli.ContainerInspect(ctx, c.ID(), client.ContainerInspectOptions{})
	if err != nil {
		return "", err
	}
	if res.Container.NetworkSettings == nil {
		return "", fmt.Errorf("%s: no network settings", c.spec.Alias)
	}
	for p, bs := range res.Container.NetworkSettings.Ports {
		if int(p.Num()) != c.spec.Port {
			continue
		}
		for _, b := range bs {
			if b.HostPort != "" && b.HostPort != "0" {
				return "127.0.0.1:" + b.HostPort, nil
			}
		}
	}
	return "", fmt.Errorf("%s: port %d is not published (container stopped?)", c.spec.Alias, c.spec.Port)
}

// WaitReady waits until the gRPC port answers a health check over the
// published port. Any gRPC answer counts (UNIMPLEMENTED too), but not
// UNAVAILABLE: Docker's proxy accepts connections before the process listens.
func (c *Container) WaitReady(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) {
		if err := ctx.Err(); err != nil {
			return err
		}
		addr, err := c.Addr(ctx)
		if err == nil {
			err = healthCheck(ctx, addr)
		}
		if err == nil {
			return nil
		}
		last = err
		if st, _ := c.State(ctx); st == "exited" || st == "dead" {
			return fmt.Errorf("container %s before it was ready: %v", st, last)
		}
		time.Sleep(150 * time.Millisecond)
	}
	return fmt.Errorf("not ready within %v: %v", within, last)
}

func healthCheck(ctx context.Context, addr string) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(cc).Check(cctx, &healthpb.HealthCheckRequest{})
	switch status.Code(err) {
	case codes.OK, codes.Unimplemented, codes.NotFound:
		return nil
	}
	return err
}

// State is Docker's state: running, paused, exited, ...
func (c *Container) State(ctx context.Context) (string, error) {
	res, err := c.env.cli.ContainerInspect(ctx, c.ID(), client.ContainerInspectOptions{})
	if err != nil {
		return "", err
	}
	if res.Container.State == nil {
		return "", nil
	}
	return string(res.Container.State.Status), nil
}

// Stop sends SIGTERM (the server's graceful shutdown) and waits up to grace
// before Docker kills it.
func (c *Container) Stop(ctx context.Context, grace time.Duration) error {
	secs := int(grace.Seconds())
	_, err := c.env.cli.ContainerStop(ctx, c.ID(), client.ContainerStopOptions{Timeout: &secs})
	return err
}

// Kill sends SIGKILL: no graceful shutdown.
func (c *Container) Kill(ctx context.Context) error {
	_, err := c.env.cli.ContainerKill(ctx, c.ID(), client.ContainerKillOptions{Signal: "SIGKILL"})
	if err != nil {
		return err
	}
	// Wait until Docker reports it stopped, so a following Start works.
	for i := 0; i < 100; i++ {
		if st, _ := c.State(ctx); st != "running" {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s still running after SIGKILL", c.spec.Alias)
}

// Start starts a stopped container again (same filesystem, so its data dir
// survives) and waits until it answers.
func (c *Container) Start(ctx context.Context) error {
	if _, err := c.env.cli.ContainerStart(ctx, c.ID(), client.ContainerStartOptions{}); err != nil {
		return err
	}
	return c.WaitReady(ctx, c.spec.Ready)
}

// Pause freezes every process of the container (connections stay open but
// nothing answers).
func (c *Container) Pause(ctx context.Context) error {
	_, err := c.env.cli.ContainerPause(ctx, c.ID(), client.ContainerPauseOptions{})
	if err == nil {
		c.mu.Lock()
		c.paused = true
		c.mu.Unlock()
	}
	return err
}

// Unpause thaws it.
func (c *Container) Unpause(ctx context.Context) error {
	_, err := c.env.cli.ContainerUnpause(ctx, c.ID(), client.ContainerUnpauseOptions{})
	if err == nil {
		c.mu.Lock()
		c.paused = false
		c.mu.Unlock()
	}
	return err
}

// Disconnect cuts the container from the run's network (its published port
// goes too: the harness cannot reach it either).
func (c *Container) Disconnect(ctx context.Context) error {
	_, err := c.env.cli.NetworkDisconnect(ctx, c.env.network.ID, client.NetworkDisconnectOptions{Container: c.ID(), Force: true})
	return err
}

// Connect puts it back on the run's network under its alias.
func (c *Container) Connect(ctx context.Context) error {
	_, err := c.env.cli.NetworkConnect(ctx, c.env.network.ID, client.NetworkConnectOptions{
		Container:      c.ID(),
		EndpointConfig: &network.EndpointSettings{Aliases: []string{c.spec.Alias}, IPAMConfig: &network.EndpointIPAMConfig{IPv4Address: c.ip}},
	})
	return err
}

// MemoryBytes is the container's current memory use (cgroup usage less
// page cache where Docker reports it).
func (c *Container) MemoryBytes(ctx context.Context) (uint64, error) {
	res, err := c.env.cli.ContainerStats(ctx, c.ID(), client.ContainerStatsOptions{Stream: false})
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	var s container.StatsResponse
	if err := json.NewDecoder(res.Body).Decode(&s); err != nil {
		return 0, err
	}
	usage := s.MemoryStats.Usage
	for _, k := range []string{"inactive_file", "total_inactive_file", "cache"} {
		if v, ok := s.MemoryStats.Stats[k]; ok && v < usage {
			usage -= v
			break
		}
	}
	return usage, nil
}

// Logs returns the container's output so far (at most the last 64 KiB).
func (c *Container) Logs(ctx context.Context) string {
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	rc, err := c.c.Logs(lctx)
	if err != nil {
		return "(logs: " + err.Error() + ")"
	}
	defer rc.Close()
	b, _ := io.ReadAll(io.LimitReader(rc, 8<<20))
	if len(b) > 64<<10 {
		b = append([]byte("...\n"), b[len(b)-64<<10:]...)
	}
	return string(b)
}

// Terminate removes the container (unpausing it first: Docker cannot stop a
// paused container on every engine).
func (c *Container) Terminate(ctx context.Context) error {
	c.mu.Lock()
	if c.gone {
		c.mu.Unlock()
		return nil
	}
	c.gone = true
	paused := c.paused
	c.mu.Unlock()
	ctx = context.WithoutCancel(ctx)
	if paused {
		_ = c.Unpause(ctx)
	}
	timeout := time.Duration(0)
	err := c.c.Terminate(ctx, testcontainers.StopTimeout(timeout))
	if err != nil && strings.Contains(err.Error(), "No such container") {
		return nil
	}
	return err
}

// Remove removes the container now and forgets it.
func (c *Container) Remove(ctx context.Context) error {
	err := c.Terminate(ctx)
	c.env.mu.Lock()
	for i, x := range c.env.containers {
		if x == c {
			c.env.containers = append(c.env.containers[:i], c.env.containers[i+1:]...)
			break
		}
	}
	c.env.mu.Unlock()
	return err
}

// Itoa is strconv.Itoa (kept here so callers building commands need no import).
func Itoa(i int) string { return strconv.Itoa(i) }
