package main

import (
	"context"

	updatesv1 "github.com/polystream/polystream/go/gen/polystream/updates/v1"
)

func runUpdates(ctx context.Context, args []string) error {
	c := newCommand("updates")
	var topics listFlag
	req := &updatesv1.SubscribeRequest{}
	c.flags.Var(&topics, "topics", "topics a,b (at least one)")
	c.flags.StringVar(&req.ClientId, "client-id", "", "client id")
	count := c.flags.Int("count", 0, "exit 0 after N updates")
	if err := c.parse(args); err != nil {
		return err
	}
	req.Topics = topics
	ctx, stub, done, err := stream(ctx, c, updatesv1.NewStreamServiceClient)
	if err != nil {
		return err
	}
	defer done()
	updates, err := stub.SubscribeToUpdates(ctx, req)
	if err != nil {
		return err
	}
	return printStream(updates.Recv, *count, nil)
}

func runPublishUpdate(ctx context.Context, args []string) error {
	c := newCommand("publish-update")
	req := &updatesv1.PublishUpdateRequest{}
	metadata := mapFlag{}
	c.flags.StringVar(&req.Topic, "topic", "", "topic")
	c.flags.StringVar(&req.Message, "message", "", "message text")
	c.flags.Var(&metadata, "metadata", "k=v,k2=v2")
	if err := c.parse(args); err != nil {
		return err
	}
	req.Metadata = metadata
	return unary(ctx, c, updatesv1.NewStreamServiceClient, func(ctx context.Context, stub updatesv1.StreamServiceClient) (*updatesv1.PublishUpdateResponse, error) {
		return stub.PublishUpdate(ctx, req)
	})
}

func runQuery(ctx context.Context, args []string) error {
	c := newCommand("query")
	req := &updatesv1.QueryRequest{}
	c.flags.StringVar(&req.Query, "sql", "", "one SELECT against large_table")
	batchSize := c.flags.Int("batch-size", 0, "rows per batch (0 = 100)")
	if err := c.parse(args); err != nil {
		return err
	}
	req.BatchSize = int32(*batchSize)
	ctx, stub, done, err := stream(ctx, c, updatesv1.NewStreamServiceClient)
	if err != nil {
		return err
	}
	defer done()
	results, err := stub.StreamQueryResults(ctx, req)
	if err != nil {
		return err
	}
	return printStream(results.Recv, 0, nil)
}

func runTail(ctx context.Context, args []string) error {
	c := newCommand("tail")
	req := &updatesv1.LogRequest{}
	c.flags.StringVar(&req.ServiceName, "service", "", `service: events, updates, chat, server ("" = all)`)
	c.flags.StringVar(&req.LogLevel, "level", "", "minimum level: debug, info, warn, error")
	lines := c.flags.Int("lines", 0, "past records first")
	c.flags.BoolVar(&req.Follow, "follow", false, "keep the stream open for new records")
	count := c.flags.Int("count", 0, "exit 0 after N records")
	if err := c.parse(args); err != nil {
		return err
	}
	req.Lines = int32(*lines)
	ctx, stub, done, err := stream(ctx, c, updatesv1.NewStreamServiceClient)
	if err != nil {
		return err
	}
	defer done()
	logs, err := stub.TailLogs(ctx, req)
	if err != nil {
		return err
	}
	return printStream(logs.Recv, *count, nil)
}
