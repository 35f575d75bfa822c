package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"
)

// A transcript is one recorded answer of dism.exe: the command it answers,
// how the process ended, what the replay does to the file system so the
// pipeline above can go on, and the console output itself.
//
// The file format is documented in
// agent/engine/dism/testdata/transcripts/README.md: a header of "key: value"
// lines, a line "---", then the body exactly as dism.exe printed it.
type transcript struct {
	// file is the transcript's path, for messages.
	file string
	// command is the header's command line as written, for messages.
	command string
	// patterns must all hold for the command line dism-replay was given.
	patterns []pattern
	// exit is the recorded exit code, as dism.exe's process returned it
	// (an HRESULT read as an unsigned 32-bit value, or a Win32 code).
	exit uint32
	// effects are done, in order, before the body is written.
	effects []effect
	// times bounds how often the transcript answers in one scenario run;
	// zero means without bound.
	times int
	// encoding is how the body is written to stdout (utf-8 unless said).
	encoding string
	// body is the console output with LF line ends, as stored.
	body []byte
}

// pattern is one glob of a command header. A negated pattern must match no
// argument; any other must match at least one.
type pattern struct {
	glob   string // lower case: DISM reads its options without regard to case
	negate bool
}

// Header keys. An unknown key is refused, so that a misspelt one cannot be
// silently ignored.
const (
	keyCommand  = "command"
	keyExit     = "exit"
	keyEffect   = "effect"
	keyTimes    = "times"
	keyEncoding = "encoding"
	keyUse      = "use"
)

// maxTranscriptBytes bounds a transcript file; the largest real ones are a
// few kilobytes.
const maxTranscriptBytes = 4 << 20

// header is a transcript file's header before it is merged with the file
// it uses, if any.
type header struct {
	command  string
	exit     string
	effects  []string
	times    string
	encoding string
	use      string
}

// loadTranscript reads a transcript file. A file whose header says "use:"
// takes its body, and whatever its own header leaves out, from the file it
// names, relative to its own folder.
func loadTranscript(path string) (*transcript, error) {
	h, body, hasBody, err := readTranscriptFile(path)
	if err != nil {
		return nil, err
	}
	if h.use != "" {
		if hasBody {
			return nil, fmt.Errorf("%s: a transcript that says %q takes its output from there: remove the lines from \"---\" on", path, keyUse+": "+h.use)
		}
		used := h.use
		if !filepath.IsAbs(used) {
			used = filepath.Join(filepath.Dir(path), filepath.FromSlash(used))
		}
		base, baseBody, baseHasBody, err := readTranscriptFile(used)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, keyUse, err)
		}
		if base.use != "" || !baseHasBody {
			return nil, fmt.Errorf("%s: %s %s: that file must be a recording with its own output, not another \"use:\"", path, keyUse, h.use)
		}
		h = merge(h, base)
		body = baseBody
	} else if !hasBody {
		return nil, fmt.Errorf("%s: no line \"---\": put the recorded output after a line \"---\" (or name a recording with \"use:\")", path)
	}
	t, err := h.transcript(path)
	if err != nil {
		return nil, err
	}
	t.body = body
	return t, nil
}

// merge fills what h leaves out from base. Effects are taken as a whole: a
// file that names effects replaces the ones of the file it uses.
func merge(h, base header) header {
	if h.command == "" {
		h.command = base.command
	}
	if h.exit == "" {
		h.exit = base.exit
	}
	if h.effects == nil {
		h.effects = base.effects
	}
	if h.times == "" {
		h.times = base.times
	}
	if h.encoding == "" {
		h.encoding = base.encoding
	}
	return h
}

// readTranscriptFile splits a file into its header and its body.
func readTranscriptFile(path string) (header, []byte, bool, error) {
	info, err := os.Stat(path)
	if err != nil {
		return header{}, nil, false, err
	}
	if !info.Mode().IsRegular() {
		return header{}, nil, false, fmt.Errorf("%s is not a regular file", path)
	}
	if info.Size() > maxTranscriptBytes {
		return header{}, nil, false, fmt.Errorf("%s: %d bytes, more than a transcript may hold (%d)", path, info.Size(), maxTranscriptBytes)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return header{}, nil, false, err
	}
	h, body, hasBody, err := parseTranscript(data)
	if err != nil {
		return header{}, nil, false, fmt.Errorf("%s: %w", path, err)
	}
	return h, body, hasBody, nil
}

// parseTranscript splits a transcript's bytes into header and body. The body
// is everything after the first line that is exactly "---", byte for byte.
func parseTranscript(data []byte) (header, []byte, bool, error) {
	var h header
	rest := data
	for lineNo := 1; len(rest) > 0; lineNo++ {
		line, next, _ := bytes.Cut(rest, []byte("\n"))
		rest = next
		text := strings.TrimSuffix(string(line), "\r")
		if text == "---" {
			return h, rest, true, nil
		}
		if !utf8.ValidString(text) {
			return h, nil, false, fmt.Errorf("line %d: the header must be UTF-8", lineNo)
		}
		text = strings.TrimSpace(text)
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		key, value, ok := strings.Cut(text, ":")
		if !ok {
			return h, nil, false, fmt.Errorf("line %d: %q is not \"key: value\" (keys: command, exit, effect, times, encoding, use)", lineNo, text)
		}
		key, value = strings.ToLower(strings.TrimSpace(key)), strings.TrimSpace(value)
		if value == "" {
			return h, nil, false, fmt.Errorf("line %d: %s has no value", lineNo, key)
		}
		var dst *string
		switch key {
		case keyCommand:
			dst = &h.command
		case keyExit:
			dst = &h.exit
		case keyTimes:
			dst = &h.times
		case keyEncoding:
			dst = &h.encoding
		case keyUse:
			dst = &h.use
		case keyEffect:
			h.effects = append(h.effects, value)
			continue
		default:
			return h, nil, false, fmt.Errorf("line %d: unknown key %q (keys: command, exit, effect, times, encoding, use)", lineNo, key)
		}
		if *dst != "" {
			return h, nil, false, fmt.Errorf("line %d: %s is given twice", lineNo, key)
		}
		*dst = value
	}
	return h, nil, false, nil
}

// transcript checks a complete header and turns it into a transcript.
func (h header) transcript(path string) (*transcript, error) {
	if h.command == "" {
		return nil, fmt.Errorf("%s: no \"command:\" line: say which dism command this answers, e.g. \"command: /Add-Package /PackagePath:*\"", path)
	}
	if h.exit == "" {
		return nil, fmt.Errorf("%s: no \"exit:\" line: give the exit code dism.exe returned (0, a decimal Win32 code, or 0x... for an HRESULT)", path)
	}
	t := &transcript{file: path, command: h.command, encoding: encodingUTF8}
	var err error
	if t.patterns, err = parsePatterns(h.command); err != nil {
		return nil, fmt.Errorf("%s: command: %w", path, err)
	}
	if t.exit, err = parseExitCode(h.exit); err != nil {
		return nil, fmt.Errorf("%s: exit: %w", path, err)
	}
	for _, e := range h.effects {
		eff, err := parseEffect(e)
		if err != nil {
			return nil, fmt.Errorf("%s: effect: %w", path, err)
		}
		t.effects = append(t.effects, eff)
	}
	if h.times != "" {
		n, err := strconv.Atoi(h.times)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%s: times: %q is not a count of 1 or more", path, h.times)
		}
		t.times = n
	}
	if h.encoding != "" {
		enc := strings.ToLower(h.encoding)
		if _, ok := encodings[enc]; !ok {
			return nil, fmt.Errorf("%s: encoding: %q is not one of %s", path, h.encoding, encodingNames())
		}
		t.encoding = enc
	}
	return t, nil
}

// parseExitCode reads "0", a decimal code, or "0x…" for an HRESULT.
func parseExitCode(s string) (uint32, error) {
	var (
		n   uint64
		err error
	)
	if hex, ok := strings.CutPrefix(strings.ToLower(s), "0x"); ok {
		n, err = strconv.ParseUint(hex, 16, 32)
	} else {
		n, err = strconv.ParseUint(s, 10, 32)
	}
	if err != nil {
		return 0, fmt.Errorf("%q is not an exit code: write it in decimal (2148468766) or as an HRESULT (0x800f081e)", s)
	}
	return uint32(n), nil
}

// parsePatterns splits a command header into its patterns: words separated
// by spaces, a word in double quotes may hold spaces, and a word that starts
// with "!" must match no argument.
func parsePatterns(command string) ([]pattern, error) {
	words, err := splitWords(command)
	if err != nil {
		return nil, err
	}
	var ps []pattern
	for _, w := range words {
		p := pattern{glob: strings.ToLower(w)}
		if rest, ok := strings.CutPrefix(p.glob, "!"); ok {
			p.glob, p.negate = rest, true
		}
		if p.glob == "" {
			return nil, fmt.Errorf("%q: an empty pattern matches nothing", w)
		}
		ps = append(ps, p)
	}
	if len(ps) == 0 {
		return nil, errors.New("no pattern")
	}
	for _, p := range ps {
		if !p.negate {
			return ps, nil
		}
	}
	return nil, errors.New("only negated patterns: name at least the dism verb, e.g. /Get-WimInfo")
}

// splitWords splits on spaces, keeping double-quoted words whole.
func splitWords(s string) ([]string, error) {
	var (
		words   []string
		cur     strings.Builder
		inQuote bool
		inWord  bool
	)
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			inWord = true
		case (r == ' ' || r == '\t') && !inQuote:
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inQuote {
		return nil, fmt.Errorf("%q: a double quote is not closed", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// matches tells whether the transcript answers the command line args.
func (t *transcript) matches(args []string) bool {
	lower := make([]string, len(args))
	for i, a := range args {
		lower[i] = strings.ToLower(a)
	}
	for _, p := range t.patterns {
		found := false
		for _, a := range lower {
			if matchGlob(p.glob, a) {
				found = true
				break
			}
		}
		if found == p.negate {
			return false
		}
	}
	return true
}

// matchGlob matches s against a glob where '*' stands for any run of
// characters (path separators included: paths differ on every run) and '?'
// for any one character. There are no character classes: '[' in a glob
// matches itself.
func matchGlob(glob, s string) bool {
	g, str := []rune(glob), []rune(s)
	gi, si := 0, 0
	star, mark := -1, 0
	for si < len(str) {
		switch {
		case gi < len(g) && (g[gi] == '?' || g[gi] == str[si]):
			gi++
			si++
		case gi < len(g) && g[gi] == '*':
			star, mark = gi, si
			gi++
		case star >= 0:
			gi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for gi < len(g) && g[gi] == '*' {
		gi++
	}
	return gi == len(g)
}

// loadScenario reads every transcript of a scenario folder: the files whose
// names end in ".txt", in file-name order (the order they are tried in).
func loadScenario(dir string) ([]*transcript, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var ts []*transcript
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".txt") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		t, err := loadTranscript(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		ts = append(ts, t)
	}
	return ts, nil
}

// output is the body as dism.exe writes it: every LF that is not already
// preceded by CR becomes CRLF, a lone CR (a progress bar redrawn in place)
// stays, and the body gains or loses no final line end. Then it is encoded
// in the transcript's encoding.
func (t *transcript) output() ([]byte, error) {
	var b bytes.Buffer
	b.Grow(len(t.body) + bytes.Count(t.body, []byte("\n")))
	sc := bufio.NewScanner(bytes.NewReader(t.body))
	sc.Buffer(make([]byte, 0, 64<<10), maxTranscriptBytes)
	sc.Split(scanLinesKeepEnd)
	for sc.Scan() {
		line := sc.Bytes()
		if bytes.HasSuffix(line, []byte("\n")) && !bytes.HasSuffix(line, []byte("\r\n")) {
			b.Write(line[:len(line)-1])
			b.WriteString("\r\n")
			continue
		}
		b.Write(line)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return encode(t.encoding, b.Bytes())
}

// scanLinesKeepEnd is bufio.ScanLines that keeps each line's "\n".
func scanLinesKeepEnd(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return i + 1, data[:i+1], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}
