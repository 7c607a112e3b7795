// Package server wires the events, updates and chat services into one
// grpc.Server with health, reflection, keepalive and graceful shutdown.
package server

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/polystream/polystream/go/events"
)

// Config holds every setting of `polystream serve` (docs/contract.md).
type Config struct {
	Host                 string
	Port                 int
	DataDir              string
	HistorySize          int
	QueueSize            int
	Backpressure         string
	PublishTimeout       time.Duration
	MaxMessageSize       int
	MaxConcurrentStreams int
	KeepaliveTime        time.Duration
	KeepaliveTimeout     time.Duration
	KeepaliveMinTime     time.Duration
	ShutdownGrace        time.Duration
	ChatKeepAlive        time.Duration
	LogLevel             string
	// InitialWindowSize > 0 fixes the HTTP/2 stream and connection
	// flow-control windows (bytes); 0 = grpc-go's dynamic, BDP-probed ones.
	InitialWindowSize int
	// UploadReadDelay > 0 makes UploadMessages wait that long before each
	// read (a testing knob: the conformance harness's steady slow reader);
	// 0 = none, at most MaxUploadReadDelay.
	UploadReadDelay time.Duration
	// Fault is a deliberate defect for the conformance harness's self-test
	// only ("" = none; Faults lists the names; docs/contract.md, "Fault
	// modes (self-test only)").
	Fault string
}

// Faults lists the accepted --fault values (docs/contract.md, "Fault modes
// (self-test only)"): the events service's self-test faults
// (go/events/faults.go) and the server's own (faults.go).
var Faults = slices.Concat(events.Faults, serverFaults)

// checkFault refuses a --fault value no service implements.
func checkFault(fault string) error {
	if fault == "" || slices.Contains(Faults, fault) {
		return nil
	}
	return fmt.Errorf("--fault must be one of %s; got %q", strings.Join(Faults, ", "), fault)
}

// Bounds of --initial-window-size when it is not 0: HTTP/2's smallest
// default window (grpc-go ignores anything smaller) and largest window.
const (
	MinWindowSize = 65535
	MaxWindowSize = 1<<31 - 1
)

// MaxUploadReadDelay bounds --upload-read-delay.
const MaxUploadReadDelay = time.Minute

// Policies lists the accepted --backpressure values.
var Policies = []string{"drop-newest", "drop-oldest", "block", "disconnect"}

// LogLevels lists the accepted --log-level values.
var LogLevels = []string{"debug", "info", "warn", "error"}

// DefaultConfig returns the defaults of docs/contract.md.
func DefaultConfig() Config {
	return Config{
		Host:             "127.0.0.1",
		Port:             50051,
		HistorySize:      1000,
		QueueSize:        256,
		Backpressure:     "disconnect",
		PublishTimeout:   5 * time.Second,
		MaxMessageSize:   4 << 20,
		KeepaliveTime:    30 * time.Second,
		KeepaliveTimeout: 10 * time.Second,
		KeepaliveMinTime: 5 * time.Second,
		ShutdownGrace:    5 * time.Second,
		ChatKeepAlive:    15 * time.Second,
		LogLevel:         "info",
	}
}

// ErrHelp is returned by ParseFlags when -h or --help was given.
var ErrHelp = flag.ErrHelp

// ParseFlags builds a Config from args, then POLYSTREAM_* variables read
// through getenv, then defaults: a flag beats its variable. With -h it
// returns ErrHelp (print Usage then).
func ParseFlags(args []string, getenv func(string) string) (Config, error) {
	cfg := DefaultConfig()
	fs := newFlagSet(&cfg)
	fs.SetOutput(io.Discard) // the caller reports errors its own way
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err := applyEnv(fs, getenv); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

// Usage writes the flags of `polystream serve` with their defaults.
func Usage(w io.Writer) {
	cfg := DefaultConfig()
	fs := newFlagSet(&cfg)
	fs.SetOutput(w)
	fmt.Fprintln(w, "usage: polystream serve [flags]; each flag has a POLYSTREAM_* variable (--data-dir: POLYSTREAM_DATA_DIR)")
	fs.PrintDefaults()
}

func newFlagSet(cfg *Config) *flag.FlagSet {
	fs := flag.NewFlagSet("polystream serve", flag.ContinueOnError)
	fs.StringVar(&cfg.Host, "host", cfg.Host, "address to listen on")
	fs.IntVar(&cfg.Port, "port", cfg.Port, "port to listen on; 0 = a free port")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, `directory for the durable event log; "" = in memory`)
	fs.IntVar(&cfg.HistorySize, "history-size", cfg.HistorySize, "events retained in the log")
	fs.IntVar(&cfg.QueueSize, "queue-size", cfg.QueueSize, "per-subscriber queue size")
	fs.StringVar(&cfg.Backpressure, "backpressure", cfg.Backpressure, "slow subscriber policy: "+strings.Join(Policies, ", "))
	fs.DurationVar(&cfg.PublishTimeout, "publish-timeout", cfg.PublishTimeout, "how long a publisher waits under the block policy")
	fs.IntVar(&cfg.MaxMessageSize, "max-message-size", cfg.MaxMessageSize, "largest message received or sent, bytes")
	fs.IntVar(&cfg.MaxConcurrentStreams, "max-concurrent-streams", cfg.MaxConcurrentStreams, "streams per connection; 0 = unlimited")
	fs.DurationVar(&cfg.KeepaliveTime, "keepalive-time", cfg.KeepaliveTime, "ping an idle connection after this long")
	fs.DurationVar(&cfg.KeepaliveTimeout, "keepalive-timeout", cfg.KeepaliveTimeout, "close a connection whose ping is not answered in this long")
	fs.DurationVar(&cfg.KeepaliveMinTime, "keepalive-min-time", cfg.KeepaliveMinTime, "clients may ping this often, also without streams")
	fs.DurationVar(&cfg.ShutdownGrace, "shutdown-grace", cfg.ShutdownGrace, "how long graceful shutdown may take")
	fs.DurationVar(&cfg.ChatKeepAlive, "chat-keepalive", cfg.ChatKeepAlive, "interval of keep-alive messages in Chat")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "minimum log level: "+strings.Join(LogLevels, ", "))
	fs.IntVar(&cfg.InitialWindowSize, "initial-window-size", cfg.InitialWindowSize, "fixed HTTP/2 stream and connection windows, bytes; 0 = dynamic (BDP probing)")
	fs.DurationVar(&cfg.UploadReadDelay, "upload-read-delay", cfg.UploadReadDelay, "testing knob: UploadMessages waits this long before reading each message; 0 = none, at most "+MaxUploadReadDelay.String())
	fs.StringVar(&cfg.Fault, "fault", cfg.Fault, "conformance self-test only: a deliberate defect, one of "+strings.Join(Faults, ", "))
	return fs
}

// applyEnv sets each flag that was not given on the command line from its
// POLYSTREAM_* variable, so the command line always wins.
func applyEnv(fs *flag.FlagSet, getenv func(string) string) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		name := EnvName(f.Name)
		value := getenv(name)
		if value == "" {
			return
		}
		if err := f.Value.Set(value); err != nil {
			errs = append(errs, fmt.Errorf("%s: invalid value %q: %s", name, value, err))
		}
	})
	return errors.Join(errs...)
}

// EnvName maps a flag name to its variable: data-dir -> POLYSTREAM_DATA_DIR.
func EnvName(flagName string) string {
	return "POLYSTREAM_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Validate reports the first setting that cannot work, naming its flag.
func (c Config) Validate() error {
	switch {
	case !slices.Contains(Policies, c.Backpressure):
		return fmt.Errorf("--backpressure must be one of %s; got %q", strings.Join(Policies, ", "), c.Backpressure)
	case c.HistorySize < 1:
		return fmt.Errorf("--history-size must be >= 1, got %d", c.HistorySize)
	case c.QueueSize < 1:
		return fmt.Errorf("--queue-size must be >= 1, got %d", c.QueueSize)
	case !slices.Contains(LogLevels, c.LogLevel):
		return fmt.Errorf("--log-level must be one of %s; got %q", strings.Join(LogLevels, ", "), c.LogLevel)
	case c.Port < 0 || c.Port > 65535:
		return fmt.Errorf("--port must be between 0 and 65535, got %d", c.Port)
	case c.MaxMessageSize < 1:
		return fmt.Errorf("--max-message-size must be >= 1, got %d", c.MaxMessageSize)
	case c.MaxConcurrentStreams < 0:
		return fmt.Errorf("--max-concurrent-streams must be >= 0, got %d", c.MaxConcurrentStreams)
	case c.InitialWindowSize != 0 && (c.InitialWindowSize < MinWindowSize || c.InitialWindowSize > MaxWindowSize):
		return fmt.Errorf("--initial-window-size must be 0 or between %d and %d, got %d", MinWindowSize, MaxWindowSize, c.InitialWindowSize)
	case c.UploadReadDelay < 0 || c.UploadReadDelay > MaxUploadReadDelay:
		return fmt.Errorf("--upload-read-delay must be between 0s and %s, got %s", MaxUploadReadDelay, c.UploadReadDelay)
	case checkFault(c.Fault) != nil:
		return checkFault(c.Fault)
	}
	for _, d := range []struct {
		flag  string
		value time.Duration
	}{
		{"publish-timeout", c.PublishTimeout},
		{"keepalive-time", c.KeepaliveTime},
		{"keepalive-timeout", c.KeepaliveTimeout},
		{"keepalive-min-time", c.KeepaliveMinTime},
		{"shutdown-grace", c.ShutdownGrace},
		{"chat-keepalive", c.ChatKeepAlive},
	} {
		if d.value <= 0 {
			return fmt.Errorf("--%s must be > 0, got %s", d.flag, d.value)
		}
	}
	return nil
}
