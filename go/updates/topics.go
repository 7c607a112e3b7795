package updates

import (
	"context"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"

	updatesv1 "github.com/polystream/polystream/go/gen/polystream/updates/v1"
)

// topicUpdate is one published update, shared read-only by every recipient;
// each stream stamps its own sequence when it sends.
type topicUpdate struct {
	topic    string
	message  string
	metadata map[string]string
	at       time.Time
}

type topicSub struct {
	queue   chan *topicUpdate
	dropped atomic.Uint64
}

// topicHub routes published updates to subscribers' bounded queues. Updates have
// no log to resume from, so a full queue drops (and counts) rather than blocking
// the publisher or the other subscribers.
type topicHub struct {
	size int
	mu   sync.RWMutex
	subs map[string]map[*topicSub]struct{}
}

func newTopicHub(size int) *topicHub {
	return &topicHub{size: size, subs: make(map[string]map[*topicSub]struct{})}
}

func (h *topicHub) subscribe(topics []string) *topicSub {
	sub := &topicSub{queue: make(chan *topicUpdate, h.size)}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, t := range topics {
		m := h.subs[t]
		if m == nil {
			m = make(map[*topicSub]struct{})
			h.subs[t] = m
		}
		m[sub] = struct{}{}
	}
	return sub
}

func (h *topicHub) unsubscribe(topics []string, sub *topicSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, t := range topics {
		if m := h.subs[t]; m != nil {
			delete(m, sub)
			if len(m) == 0 {
				delete(h.subs, t) // no empty topics left behind
			}
		}
	}
}

// publish queues u for every subscriber of its topic and returns how many
// queues took it.
func (h *topicHub) publish(u *topicUpdate) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	n := 0
	for sub := range h.subs[u.topic] {
		select {
		case sub.queue <- u:
			n++
		default:
			sub.dropped.Add(1)
		}
	}
	return n
}

// uniqueTopics drops empty and repeated topics, keeping order.
func uniqueTopics(in []string) []string {
	seen := make(map[string]bool, len(in))
	out := make([]string, 0, len(in))
	for _, t := range in {
		if t != "" && !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out
}

func (s *Service) SubscribeToUpdates(req *updatesv1.SubscribeRequest, stream updatesv1.StreamService_SubscribeToUpdatesServer) error {
	topics := uniqueTopics(req.GetTopics())
	if len(topics) == 0 {
		return invalid("at least one topic is required")
	}
	ctx, done := s.life.Stream(stream.Context())
	defer done()

	sub := s.topics.subscribe(topics)
	defer s.topics.unsubscribe(topics, sub)
	// Headers tell the client it is subscribed: updates published from now on
	// reach it.
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	var seq uint64
	for {
		select {
		case <-ctx.Done():
			return s.life.Err(ctx)
		case u := <-sub.queue:
			seq++
			if err := stream.Send(&updatesv1.Update{
				Topic:     u.topic,
				Message:   u.message,
				Timestamp: timestamppb.New(u.at),
				Metadata:  u.metadata,
				Sequence:  seq,
			}); err != nil {
				return err
			}
		}
	}
}

func (s *Service) PublishUpdate(ctx context.Context, req *updatesv1.PublishUpdateRequest) (*updatesv1.PublishUpdateResponse, error) {
	if req.GetTopic() == "" {
		return nil, invalid("topic is required")
	}
	n := s.topics.publish(&topicUpdate{
		topic:    req.GetTopic(),
		message:  req.GetMessage(),
		metadata: maps.Clone(req.GetMetadata()),
		at:       time.Now(),
	})
	return &updatesv1.PublishUpdateResponse{Recipients: int32(n)}, nil
}

// count is how many subscribers topic has now.
func (h *topicHub) count(topic string) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.subs[topic])
}

// dropped is how many updates the subscribers of topic have missed so far.
func (h *topicHub) dropped(topic string) uint64 {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var n uint64
	for sub := range h.subs[topic] {
		n += sub.dropped.Load()
	}
	return n
}
