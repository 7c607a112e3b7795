package codes

import (
	"testing"

	"google.golang.org/grpc/codes"
)

func TestName(t *testing.T) {
	for code, want := range map[codes.Code]string{codes.OK: "OK", codes.Canceled: "CANCELLED", codes.InvalidArgument: "INVALID_ARGUMENT", codes.Unauthenticated: "UNAUTHENTICATED", codes.Code(99): "Code(99)"} {
		if got := Name(code); got != want {
			t.Errorf("Name(%d) = %q, want %q", code, got, want)
		}
	}
}
