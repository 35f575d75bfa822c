package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// An effect is what the replay does to the file system, as dism.exe would
// have, so that the code driving DISM can go on: the pipeline uploads the
// exported file, and looks into the mount folder. They are kept few on
// purpose; each is documented in the transcripts' README.
type effect struct {
	kind string
	// from and to are DISM options ("/MountDir"), whose values on the
	// command line are the paths the effect works on.
	from, to string
	// sub is a path below from's value (mkdir).
	sub string
}

const (
	// effectMkdir: "mkdir /MountDir Windows" creates the folder Windows
	// in the folder the command's /MountDir: names, as a mount would.
	effectMkdir = "mkdir"
	// effectCopy: "copy /SourceImageFile /DestinationImageFile" copies the
	// file the first option names to the path the second names, as an
	// export into a new file would.
	effectCopy = "copy"
)

func parseEffect(s string) (effect, error) {
	words, err := splitWords(s)
	if err != nil {
		return effect{}, err
	}
	if len(words) == 0 {
		return effect{}, fmt.Errorf("%q names no effect", s)
	}
	e := effect{kind: strings.ToLower(words[0])}
	switch {
	case e.kind == effectMkdir && len(words) == 3:
		e.from, e.sub = words[1], words[2]
	case e.kind == effectCopy && len(words) == 3:
		e.from, e.to = words[1], words[2]
	default:
		return effect{}, fmt.Errorf("%q: the effects are \"mkdir /Option SUBFOLDER\" and \"copy /FromOption /ToOption\"", s)
	}
	for _, opt := range []string{e.from, e.to} {
		if opt != "" && (!strings.HasPrefix(opt, "/") || strings.Contains(opt, ":")) {
			return effect{}, fmt.Errorf("%q: %q is not a DISM option name such as /MountDir", s, opt)
		}
	}
	if e.sub != "" && (filepath.IsAbs(e.sub) || strings.Contains(e.sub, "..")) {
		return effect{}, fmt.Errorf("%q: %q must be a folder below the option's path", s, e.sub)
	}
	return e, nil
}

// apply does the effect for the command line args.
func (e effect) apply(args []string) error {
	from, err := optionValue(args, e.from)
	if err != nil {
		return fmt.Errorf("effect %s: %w", e.kind, err)
	}
	switch e.kind {
	case effectMkdir:
		dir := filepath.Join(from, filepath.FromSlash(e.sub))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("effect mkdir: %w", err)
		}
		return nil
	case effectCopy:
		to, err := optionValue(args, e.to)
		if err != nil {
			return fmt.Errorf("effect copy: %w", err)
		}
		if err := copyFile(from, to); err != nil {
			return fmt.Errorf("effect copy %s to %s: %w", from, to, err)
		}
		return nil
	}
	return fmt.Errorf("unknown effect %q", e.kind)
}

// optionValue is the value of "/Name:value" on the command line, compared
// without regard to case as DISM does. The value is everything after the
// first colon, so a Windows drive's colon stays in it.
func optionValue(args []string, name string) (string, error) {
	prefix := strings.ToLower(name) + ":"
	for _, a := range args {
		if len(a) > len(prefix) && strings.EqualFold(a[:len(prefix)], prefix) {
			return a[len(prefix):], nil
		}
	}
	return "", fmt.Errorf("the command has no %s:<path>, which the transcript's effect needs", name)
}

func copyFile(from, to string) (err error) {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := dst.Close(); err == nil {
			err = cerr
		}
	}()
	_, err = io.Copy(dst, src)
	return err
}
