// Command polystream is the polystream server and CLI (docs/cli.md):
// `polystream serve` runs the server; every other command calls one RPC
// and prints each message the server sends as one JSON line on stdout.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/polystream/polystream/go/client"
)

// commands maps a command name to its runner and a one-line summary.
var commands = map[string]struct {
	run     func(ctx context.Context, args []string) error
	summary string
}{
	"serve":          {runServe, "run the server (flags: docs/contract.md)"},
	"subscribe":      {runSubscribe, "EventService.Subscribe through the resilient client"},
	"publish":        {runPublish, "EventService.Broadcast"},
	"status":         {runStatus, "EventService.GetConnectionStatus"},
	"updates":        {runUpdates, "StreamService.SubscribeToUpdates"},
	"publish-update": {runPublishUpdate, "StreamService.PublishUpdate"},
	"query":          {runQuery, "StreamService.StreamQueryResults"},
	"start-job":      {runStartJob, "StreamService.StartJob"},
	"cancel-job":     {runCancelJob, "StreamService.CancelJob"},
	"watch-job":      {runWatchJob, "StreamService.WatchJobProgress, progress bar on stderr"},
	"tail":           {runTail, "StreamService.TailLogs"},
	"send":           {runSend, "ChatService.SendMessage"},
	"messages":       {runMessages, "ChatService.SubscribeMessages"},
	"chat":           {runChat, "ChatService.Chat: stdin lines in, every message out"},
	"upload":         {runUpload, "ChatService.UploadMessages: one message per stdin line"},
	"metrics":        {runMetrics, "ChatService.StreamMetrics"},
}

func main() {
	// A reader that goes away (`| head -1`) ends the output quietly, as in
	// the Python CLI, instead of killing the process with SIGPIPE.
	signal.Ignore(syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

// run executes one command line and returns the exit code.
func run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		usage(os.Stderr)
		return 2
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(os.Stdout)
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "polystream: unknown command %q (see polystream --help)\n", args[0])
		return 2
	}
	err := cmd.run(ctx, args[1:])
	return exitCode(ctx, err)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: polystream COMMAND [flags]   (polystream COMMAND -h for its flags)")
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, "  %-15s %s\n", name, commands[name].summary)
	}
}

// exitCode reports err on stderr as docs/cli.md says and maps it to the
// exit status: 0 fine, 1 an RPC or command failure, 2 bad flags, 130
// interrupted.
func exitCode(ctx context.Context, err error) int {
	var usageErr *usageError
	switch {
	case err == nil, errors.Is(err, errBrokenPipe), errors.Is(err, errHelpShown):
		return 0
	case errors.As(err, &usageErr):
		fmt.Fprintf(os.Stderr, "polystream: %s\n", usageErr)
		return 2
	case ctx.Err() != nil:
		return 130 // Ctrl-C or SIGTERM
	}
	fmt.Fprintf(os.Stderr, "polystream: %s\n", describe(err))
	return 1
}

// describe renders an RPC error as `CODE: message`; an error that wraps one
// (e.g. "giving up after 3 retries: ...") keeps its context.
func describe(err error) string {
	var rpc interface {
		error
		GRPCStatus() *status.Status
	}
	if !errors.As(err, &rpc) {
		return err.Error()
	}
	st := rpc.GRPCStatus()
	text := strings.Replace(err.Error(), rpc.Error(), clientSideText(st), 1)
	return client.CodeName(st.Code()) + ": " + text
}

// clientSideText replaces grpc-go's texts for a deadline that passed on our
// side with the one the Python CLI prints, so both CLIs say the same.
func clientSideText(st *status.Status) string {
	msg := st.Message()
	if st.Code() == codes.DeadlineExceeded &&
		(msg == context.DeadlineExceeded.Error() || strings.HasPrefix(msg, "stream terminated by RST_STREAM")) {
		return "Deadline Exceeded"
	}
	return msg
}
