package store

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/zap"
)

// lockedBuffer is a bytes.Buffer safe for the logger's writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestEtcdsHarmlessStorageVersionErrorIsLoggedAtDebugOnly(t *testing.T) {
	t.Parallel()
	harmlessErr := errors.New("cannot detect storage schema version: missing term information")
	tests := []struct {
		name      string
		level     hclog.Level
		log       func(*zap.Logger)
		wantError bool
		wantDebug bool
	}{
		{"the missing-term storage version error at info", hclog.Info, func(l *zap.Logger) {
			l.Error("failed to update storage version", zap.String("cluster-version", "3.7.0"), zap.Error(harmlessErr))
		}, false, false},
		{"the missing-term storage version error at debug", hclog.Debug, func(l *zap.Logger) {
			l.Error("failed to update storage version", zap.String("cluster-version", "3.7.0"), zap.Error(harmlessErr))
		}, false, true},
		{"the missing-term error on a logger with fields", hclog.Debug, func(l *zap.Logger) {
			l.With(zap.Error(harmlessErr)).Error("failed to update storage version")
		}, false, true},
		{"another storage version error", hclog.Info, func(l *zap.Logger) {
			l.Error("failed to update storage version", zap.Error(errors.New("cannot create migration plan: version \"3.5.0\" is not supported")))
		}, true, false},
		{"any other error", hclog.Info, func(l *zap.Logger) {
			l.Error("failed to publish local member to cluster through raft", zap.Error(harmlessErr))
		}, true, false},
		{"a warning under the bridge's level", hclog.Debug, func(l *zap.Logger) {
			l.Warn("failed to update storage version", zap.Error(errors.New("boom")))
		}, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out lockedBuffer
			logger := hclog.New(&hclog.LoggerOptions{Level: tt.level, Output: &out})
			tt.log(newZapLogger(logger, zap.NewAtomicLevelAt(zap.ErrorLevel)))
			got := out.String()
			if has := strings.Contains(got, "[ERROR]"); has != tt.wantError {
				t.Errorf("ERROR line = %v, want %v; output:\n%s", has, tt.wantError, got)
			}
			if has := strings.Contains(got, "[DEBUG]") && strings.Contains(got, "missing term information"); has != tt.wantDebug {
				t.Errorf("DEBUG line with the error = %v, want %v; output:\n%s", has, tt.wantDebug, got)
			}
		})
	}
}
