package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/polystream/polystream/go/client"
)

const (
	defaultAddr  = "127.0.0.1:50051"
	unaryTimeout = 10 * time.Second // when --timeout is not given
)

// usageError is a bad flag or argument: exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

var (
	errHelpShown  = errors.New("help shown")
	errBrokenPipe = errors.New("stdout closed")
)

// connection holds the flags every client command shares and what they
// lead to.
type connection struct {
	name    string
	flags   *flag.FlagSet
	addr    string
	timeout time.Duration
}

// newCommand prepares the flag set of a client command with --addr and
// --timeout.
func newCommand(name string) *connection {
	c := &connection{name: name, flags: flag.NewFlagSet("polystream "+name, flag.ContinueOnError)}
	addr := os.Getenv("POLYSTREAM_ADDR")
	if addr == "" {
		addr = defaultAddr
	}
	c.flags.StringVar(&c.addr, "addr", addr, "server HOST:PORT (env POLYSTREAM_ADDR)")
	c.flags.DurationVar(&c.timeout, "timeout", 0, "overall deadline, e.g. 5s (default: none for streams, 10s for unary calls)")
	return c
}

// parse reads args; a mistake becomes a usageError, -h prints the flags.
func (c *connection) parse(args []string) error {
	c.flags.SetOutput(io.Discard)
	if err := c.flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.flags.SetOutput(os.Stdout)
			fmt.Printf("usage: polystream %s [flags]\n", c.name)
			c.flags.PrintDefaults()
			return errHelpShown
		}
		return usagef("%s: %s", c.name, err)
	}
	if c.flags.NArg() > 0 {
		return usagef("%s: unexpected argument %q", c.name, c.flags.Arg(0))
	}
	return nil
}

// dial connects with the contract's keepalive (go/client.Dial).
func (c *connection) dial() (*grpc.ClientConn, error) {
	conn, err := client.Dial(c.addr)
	if err != nil {
		return nil, usagef("%s: --addr %q: %s", c.name, c.addr, err)
	}
	return conn, nil
}

// unaryContext bounds a unary call by --timeout or 10 s.
func (c *connection) unaryContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.timeout > 0 {
		return context.WithTimeout(ctx, c.timeout)
	}
	return context.WithTimeout(ctx, unaryTimeout)
}

// streamContext bounds a stream by --timeout, if given.
func (c *connection) streamContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.timeout > 0 {
		return context.WithTimeout(ctx, c.timeout)
	}
	return context.WithCancel(ctx)
}

var jsonOptions = protojson.MarshalOptions{UseProtoNames: true}

// printMessage writes msg as one compact JSON line. protojson puts random
// spaces in its output on purpose; compacting makes the line stable.
func printMessage(msg proto.Message) error {
	raw, err := jsonOptions.Marshal(msg)
	if err != nil {
		return err
	}
	var line bytes.Buffer
	if err := json.Compact(&line, raw); err != nil {
		return err
	}
	line.WriteByte('\n')
	if _, err := os.Stdout.Write(line.Bytes()); err != nil {
		if errors.Is(err, syscall.EPIPE) {
			return errBrokenPipe
		}
		return err
	}
	return nil
}

// printStream prints each message recv returns until the stream ends or
// count messages that counts accepts were printed (count 0 = no limit).
func printStream[T proto.Message](recv func() (T, error), count int, counts func(T) bool) error {
	seen := 0
	for {
		msg, err := recv()
		if err != nil {
			return endOfStream(err)
		}
		if err := printMessage(msg); err != nil {
			return err
		}
		if counts == nil || counts(msg) {
			seen++
			if count > 0 && seen >= count {
				return nil
			}
		}
	}
}

// endOfStream maps a stream's end to the command's result: io.EOF is the
// server ending it with OK.
func endOfStream(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// listFlag is a comma-separated list: --types a.*,b.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(text string) error {
	*l = nil
	for _, item := range strings.Split(text, ",") {
		if item = strings.TrimSpace(item); item != "" {
			*l = append(*l, item)
		}
	}
	return nil
}

// mapFlag is comma-separated k=v pairs: --metadata k=v,k2=v2.
type mapFlag map[string]string

func (m *mapFlag) String() string {
	var parts []string
	for k, v := range *m {
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, ",")
}

func (m *mapFlag) Set(text string) error {
	pairs := map[string]string{}
	for _, item := range strings.Split(text, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		key, value, ok := strings.Cut(item, "=")
		if !ok || key == "" {
			return fmt.Errorf("expected k=v[,k2=v2], got %q", text)
		}
		pairs[key] = value
	}
	*m = pairs
	return nil
}

// requireFlag fails with a usage error when a required flag is empty.
func (c *connection) requireFlag(name, value string) error {
	if value == "" {
		return usagef("%s: --%s is required", c.name, name)
	}
	return nil
}
