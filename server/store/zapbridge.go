package store

import (
	"maps"
	"slices"
	"strings"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newZapLogger returns the zap logger etcd logs through: entries at level and
// above go to logger at ERROR, except the known harmless ones, which go to
// logger at DEBUG.
func newZapLogger(logger hclog.Logger, level zap.AtomicLevel) *zap.Logger {
	core := zapcore.NewCore(
		zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()),
		zapcore.AddSync(logger.StandardWriter(&hclog.StandardLoggerOptions{ForceLevel: hclog.Error})),
		level)
	return zap.New(harmlessToDebug{Core: core, logger: logger})
}

// harmlessToDebug is a zap core that sends etcd's harmless errors to DEBUG.
//
// A freshly created etcd (every first start of a data dir, and so every test)
// logs "failed to update storage version ... cannot detect storage schema
// version: missing term information" at ERROR: its storage-version monitor
// wakes when the cluster version is first set, which can be before the backend
// has committed the raft term it uses to detect the schema. The monitor tries
// again every few seconds and succeeds; the etcd maintainers call the error
// harmless (etcd-io/etcd#18978, #19040). Users should not be told about it.
type harmlessToDebug struct {
	zapcore.Core
	logger hclog.Logger
	fields []zapcore.Field
}

// harmless tells whether an entry with fields is one of etcd's harmless errors.
func harmless(ent zapcore.Entry, fields []zapcore.Field) bool {
	if ent.Message != "failed to update storage version" {
		return false
	}
	for _, f := range fields {
		if f.Type != zapcore.ErrorType {
			continue
		}
		if err, ok := f.Interface.(error); ok {
			msg := err.Error()
			return strings.Contains(msg, "missing term information") || strings.Contains(msg, "missing confstate information")
		}
	}
	return false
}

func (c harmlessToDebug) With(fields []zapcore.Field) zapcore.Core {
	return harmlessToDebug{
		Core:   c.Core.With(fields),
		logger: c.logger,
		fields: append(append([]zapcore.Field(nil), c.fields...), fields...),
	}
}

func (c harmlessToDebug) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(ent.Level) {
		return ce.AddCore(ent, c)
	}
	return ce
}

func (c harmlessToDebug) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	all := append(append([]zapcore.Field(nil), c.fields...), fields...)
	if !harmless(ent, all) {
		return c.Core.Write(ent, fields)
	}
	if !c.logger.IsDebug() {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range all {
		f.AddTo(enc)
	}
	args := make([]any, 0, 2*len(enc.Fields)+4)
	args = append(args, "message", ent.Message, "etcd_level", ent.Level.String())
	for _, k := range slices.Sorted(maps.Keys(enc.Fields)) {
		args = append(args, k, enc.Fields[k])
	}
	c.logger.Debug("harmless etcd error of a fresh data dir; etcd tries again", args...)
	return nil
}
