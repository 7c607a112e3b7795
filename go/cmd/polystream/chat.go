package main

import (
	"bufio"
	"context"
	"fmt"
	"os"

	chatv1 "github.com/polystream/polystream/go/gen/polystream/chat/v1"
)

func runSend(ctx context.Context, args []string) error {
	c := newCommand("send")
	req := &chatv1.SendMessageRequest{}
	c.flags.StringVar(&req.User, "user", "", "who sends")
	c.flags.StringVar(&req.Room, "room", "", `room ("" = general)`)
	c.flags.StringVar(&req.Content, "content", "", "message text")
	if err := c.parse(args); err != nil {
		return err
	}
	return unary(ctx, c, chatv1.NewChatServiceClient, func(ctx context.Context, stub chatv1.ChatServiceClient) (*chatv1.SendMessageResponse, error) {
		return stub.SendMessage(ctx, req)
	})
}

func runMessages(ctx context.Context, args []string) error {
	c := newCommand("messages")
	req := &chatv1.SubscribeRequest{}
	c.flags.StringVar(&req.User, "user", "", "who listens")
	c.flags.StringVar(&req.Room, "room", "", `room ("" = general)`)
	count := c.flags.Int("count", 0, "exit 0 after N messages")
	if err := c.parse(args); err != nil {
		return err
	}
	ctx, stub, done, err := stream(ctx, c, chatv1.NewChatServiceClient)
	if err != nil {
		return err
	}
	defer done()
	messages, err := stub.SubscribeMessages(ctx, req)
	if err != nil {
		return err
	}
	return printStream(messages.Recv, *count, nil)
}

// runChat sends each stdin line as a CHAT message while printing every
// message received; it half-closes at the end of stdin and returns when
// the server ends the stream.
func runChat(ctx context.Context, args []string) error {
	c := newCommand("chat")
	user := c.flags.String("user", "", "who chats")
	room := c.flags.String("room", "", `room ("" = general)`)
	if err := c.parse(args); err != nil {
		return err
	}
	ctx, stub, done, err := stream(ctx, c, chatv1.NewChatServiceClient)
	if err != nil {
		return err
	}
	defer done()
	chat, err := stub.Chat(ctx)
	if err != nil {
		return err
	}
	// The sender may still wait on stdin when the server ends the stream;
	// the process then exits without it.
	go func() {
		lines := bufio.NewScanner(os.Stdin)
		for lines.Scan() {
			if chat.Send(chatMessage(*user, *room, lines.Text())) != nil {
				return // the stream ended; Recv reports why
			}
		}
		chat.CloseSend()
	}()
	return printStream(chat.Recv, 0, nil)
}

// runUpload streams stdin's lines (or --count generated messages) and
// prints the server's summary.
func runUpload(ctx context.Context, args []string) error {
	c := newCommand("upload")
	user := c.flags.String("user", "", "who sends")
	room := c.flags.String("room", "", `room ("" = general)`)
	count := c.flags.Int("count", 0, "send N generated messages instead of stdin")
	if err := c.parse(args); err != nil {
		return err
	}
	ctx, stub, done, err := stream(ctx, c, chatv1.NewChatServiceClient)
	if err != nil {
		return err
	}
	defer done()
	upload, err := stub.UploadMessages(ctx)
	if err != nil {
		return err
	}
	send := func(content string) error {
		err := upload.Send(chatMessage(*user, *room, content))
		if err != nil {
			_, err = upload.CloseAndRecv() // the stream's status says why
		}
		return err
	}
	if *count > 0 {
		for n := 1; n <= *count; n++ {
			if err := send(fmt.Sprintf("message %d", n)); err != nil {
				return err
			}
		}
	} else {
		lines := bufio.NewScanner(os.Stdin)
		for lines.Scan() {
			if err := send(lines.Text()); err != nil {
				return err
			}
		}
	}
	resp, err := upload.CloseAndRecv()
	if err != nil {
		return err
	}
	return printMessage(resp)
}

func chatMessage(user, room, content string) *chatv1.Message {
	return &chatv1.Message{User: user, Room: room, Content: content, Type: chatv1.MessageType_MESSAGE_TYPE_CHAT}
}

// sampleNames are the metrics of one StreamMetrics sample (docs/contract.md).
var sampleNames = []string{
	"process_cpu_percent",
	"process_resident_memory_bytes",
	"process_threads",
	"server_requests_per_second",
	"server_active_streams",
}

// runMetrics prints metrics; --count counts samples: a sample is complete
// when every name has come, or when a name repeats (a new burst began).
func runMetrics(ctx context.Context, args []string) error {
	c := newCommand("metrics")
	req := &chatv1.MetricsRequest{}
	c.flags.StringVar(&req.InstanceId, "instance-id", "", "instance label (default: the server's hostname)")
	interval := c.flags.Int("interval", 0, "SECONDS between samples (0 = 1)")
	count := c.flags.Int("count", 0, "exit 0 after N samples")
	if err := c.parse(args); err != nil {
		return err
	}
	req.IntervalSeconds = int32(*interval)
	ctx, stub, done, err := stream(ctx, c, chatv1.NewChatServiceClient)
	if err != nil {
		return err
	}
	defer done()
	metrics, err := stub.StreamMetrics(ctx, req)
	if err != nil {
		return err
	}
	samples, inSample := 0, map[string]bool{}
	for {
		m, err := metrics.Recv()
		if err != nil {
			return endOfStream(err)
		}
		if err := printMessage(m); err != nil {
			return err
		}
		if inSample[m.GetName()] {
			samples, inSample = samples+1, map[string]bool{}
		}
		inSample[m.GetName()] = true
		if complete(inSample) {
			samples, inSample = samples+1, map[string]bool{}
		}
		if *count > 0 && samples >= *count {
			return nil
		}
	}
}

func complete(seen map[string]bool) bool {
	for _, name := range sampleNames {
		if !seen[name] {
			return false
		}
	}
	return true
}
