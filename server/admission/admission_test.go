package admission_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/osvc/osvc/pkg/errdefs"
	"github.com/osvc/osvc/server/admission"
)

func TestAGateLetsInItsLimitAndTheRestInTurn(t *testing.T) {
	t.Parallel()
	g, err := admission.New(admission.Config{Limit: 2, What: "imports", Setting: "osvc-server --max-concurrent-imports"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var releases []func()
	for range 2 {
		release, err := g.Enter(ctx)
		if err != nil {
			t.Fatalf("Enter within the limit: %v", err)
		}
		releases = append(releases, release)
	}

	ended, cancel := context.WithCancelCause(ctx)
	cancel(errors.New("client gone"))
	_, err = g.Enter(ended)
	if !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Fatalf("Enter past the limit with an ended context = %v, want ErrResourceExhausted", err)
	}
	for _, want := range []string{"2 imports are running", "osvc-server --max-concurrent-imports", "client gone"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}

	entered := make(chan func(), 1)
	go func() {
		release, err := g.Enter(ctx)
		if err != nil {
			t.Error(err)
			close(entered)
			return
		}
		entered <- release
	}()
	releases[0]()
	select {
	case release := <-entered:
		if release != nil {
			release()
		}
	case <-time.After(time.Minute):
		t.Fatal("a waiting call did not get in a minute after a slot was released")
	}
	releases[1]()
	// Everything released: the full limit gets in again with an ended context.
	for range 2 {
		if _, err := g.Enter(ended); err != nil {
			t.Errorf("Enter into a free gate with an ended context = %v, want in", err)
		}
	}
}

func TestNewRefusesAGateThatLetsNothingIn(t *testing.T) {
	t.Parallel()
	for _, cfg := range []admission.Config{
		{Limit: 0, What: "uploads", Setting: "--max-concurrent-uploads"},
		{Limit: 1},
	} {
		if _, err := admission.New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}
