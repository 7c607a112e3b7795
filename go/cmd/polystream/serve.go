package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/polystream/polystream/go/server"
)

// runServe runs the server until SIGINT/SIGTERM, then shuts down gracefully.
func runServe(ctx context.Context, args []string) error {
	cfg, err := server.ParseFlags(args, os.Getenv)
	if errors.Is(err, server.ErrHelp) {
		server.Usage(os.Stdout)
		return errHelpShown
	}
	if err != nil {
		return usagef("serve: %s", err)
	}
	if err := server.Run(ctx, cfg, os.Stdout); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}
