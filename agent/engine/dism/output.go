package dism

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/osvc/osvc/agent/engine"
	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// DISM's console, as dism.exe prints it. The parsers read codes and
// numbers, which every language prints alike, and the English keys of the
// listings, which /English fixes; a line they do not know is skipped.

// lines splits console output into its lines as a reader of the console
// sees them: '\r' redraws a line (the progress bar), so only the last state
// of a line counts, and blank lines go.
func lines(out []byte) []string {
	var out2 []string
	for _, raw := range bytes.Split(out, []byte("\n")) {
		line := strings.TrimRight(string(raw), "\r")
		if i := strings.LastIndexByte(line, '\r'); i >= 0 {
			line = line[i+1:]
		}
		if line = strings.TrimSpace(line); line != "" {
			out2 = append(out2, line)
		}
	}
	return out2
}

// percentRE finds a progress bar's percent: "[====   45.0%    ]", in any
// language's decimal mark.
var percentRE = regexp.MustCompile(`(\d{1,3})(?:[.,]\d+)?\s?%`)

// progressWriter receives a command's stdout as it is written and calls
// report with each new percent of its progress bars: DISM redraws a bar in
// place with '\r', and on a narrow console wraps it, so the percent is
// looked for in every segment between '\r' and '\n' as it completes.
type progressWriter struct {
	report  func(int)
	partial []byte
	last    int
}

func newProgressWriter(report func(int)) *progressWriter {
	return &progressWriter{report: report, last: -1}
}

func (w *progressWriter) Write(p []byte) (int, error) {
	for _, b := range p {
		if b == '\r' || b == '\n' {
			w.segment()
			continue
		}
		w.partial = append(w.partial, b)
		// A bar's percent may sit in a segment not ended yet.
		if b == '%' || b == ']' {
			w.segment()
		}
	}
	return len(p), nil
}

// segment reads the percent of the text gathered since the last break.
func (w *progressWriter) segment() {
	if len(w.partial) == 0 {
		return
	}
	m := percentRE.FindAllSubmatch(w.partial, -1)
	w.partial = w.partial[:0]
	if len(m) == 0 || w.report == nil {
		return
	}
	pct, err := strconv.Atoi(string(m[len(m)-1][1]))
	if err != nil || pct > 100 || pct == w.last {
		return
	}
	w.last = pct
	w.report(pct)
}

// Result is how a DISM command ended: its exit code and, for a failure, the
// code it printed (an HRESULT like 0x800f081e, or a Win32 code like 50) and
// its own message.
type Result struct {
	ExitCode int
	// Code is what the "Error: …" line printed, as printed ("0x800f081e",
	// "50"); the exit code written as an HRESULT when no line says.
	Code string
	// Message is DISM's own words after the code, its log hint left out.
	Message string
}

// OK tells a command that succeeded.
func (r Result) OK() bool { return r.ExitCode == 0 }

// errorLineRE is "Error: 0x800f081e" or "Error: 50" in any language ("Fehler:
// 0x…", "Erreur : 0x…"): a word, a colon, a code and nothing else. The
// word may be U+FFFD, what is left of it when the code page was not known.
var errorLineRE = regexp.MustCompile(`^[\p{L}\x{FFFD}][\p{L}\x{FFFD} ]{0,30}?\s?:\s*(0x[0-9A-Fa-f]{1,8}|\d{1,10})\s*$`)

// inlineErrorRE is the code at the end of "An error occurred - <package>
// Error: 0x800f081e", in any language.
var inlineErrorRE = regexp.MustCompile(`\s[\p{L}]+\s?:\s*(0x[0-9A-Fa-f]{8})\s*$`)

// logHint is DISM's pointer to its log, the last line of a failure: "The
// DISM log file can be found at C:\Windows\Logs\DISM\dism.log", in any
// language, the path perhaps missing.
func logHint(line string) bool {
	l := strings.ToLower(line)
	return strings.Contains(l, "dism.log") || strings.HasSuffix(l, ".log") || strings.HasSuffix(l, ".log.") ||
		(strings.Contains(l, "dism") && strings.Contains(l, " log"))
}

// boilerplate is what DISM prints after every failure whatever it was; the
// engine runs it with /English, so the English words are the ones to know.
var boilerplate = map[string]bool{
	"DISM failed. No operation was performed.":     true,
	"For more information, review the log file.":   true,
	"For more information, refer to the log file.": true,
	"The command completed with errors.":           true,
	"The operation completed successfully.":        true,
	"The operation completed with errors.":         true,
}

// boundary is a line a failure's message never reaches back over: the
// banner, the image lines, a progress bar, "Processing 1 of 2 - …".
func boundary(line string) bool {
	return isBanner(line) || strings.HasPrefix(line, "Processing ") ||
		(strings.HasPrefix(line, "[") && percentRE.MatchString(line))
}

// parseResult reads how a command ended from its exit code and output: the
// last "Error: …" line gives the code (an inline one when there is none);
// DISM's message is the lines after it, or, when those say nothing but that
// DISM failed, the lines before the code's first appearance (where
// /Add-Package says what went wrong with the package).
func parseResult(exitCode int, out []byte) Result {
	r := Result{ExitCode: exitCode}
	if exitCode == 0 {
		return r
	}
	ls := lines(out)
	at := -1
	for i := len(ls) - 1; i >= 0; i-- {
		if m := errorLineRE.FindStringSubmatch(ls[i]); m != nil {
			r.Code, at = normalizeCode(m[1]), i
			break
		}
	}
	if at < 0 {
		for i := len(ls) - 1; i >= 0; i-- {
			if m := inlineErrorRE.FindStringSubmatch(ls[i]); m != nil {
				r.Code, at = normalizeCode(m[1]), i
				break
			}
		}
	}
	if r.Code == "" {
		r.Code = exitCodeText(exitCode)
	}
	var msg []string
	if at >= 0 {
		msg = message(ls[at+1:])
		if len(msg) == 0 {
			first := at
			for i := at - 1; i >= 0 && !boundary(ls[i]); i-- {
				if hasCode(ls[i], r.Code) {
					first = i
				}
			}
			start := first
			for start > 0 && !boundary(ls[start-1]) {
				start--
			}
			msg = message(ls[start:first])
		}
	}
	if len(msg) == 0 {
		// Nothing around a code: the last words before the log hint are all
		// there is.
		for i := len(ls) - 1; i >= 0 && len(msg) == 0; i-- {
			if !logHint(ls[i]) && !boundary(ls[i]) && !boilerplate[ls[i]] {
				msg = append(msg, ls[i])
			}
		}
	}
	r.Message = strings.Join(msg, " ")
	return r
}

// message is the lines of a failure's message: up to the log hint, without
// the code lines, the boilerplate and lines said twice (DISM repeats a
// message once per package it applies to).
func message(ls []string) []string {
	var msg []string
	seen := map[string]bool{}
	for _, l := range ls {
		if logHint(l) {
			break
		}
		if errorLineRE.MatchString(l) || boilerplate[l] || seen[l] {
			continue
		}
		seen[l] = true
		msg = append(msg, l)
	}
	return msg
}

// hasCode tells a line that prints code, on its own or inline.
func hasCode(line, code string) bool {
	for _, re := range []*regexp.Regexp{errorLineRE, inlineErrorRE} {
		if m := re.FindStringSubmatch(line); m != nil && normalizeCode(m[1]) == code {
			return true
		}
	}
	return false
}

// normalizeCode writes an HRESULT as 0x and eight lower-case digits, and a
// decimal code as it is.
func normalizeCode(c string) string {
	if h, ok := strings.CutPrefix(strings.ToLower(c), "0x"); ok {
		n, err := strconv.ParseUint(h, 16, 32)
		if err == nil {
			return "0x" + strconv.FormatUint(n, 16)
		}
	}
	return c
}

// exitCodeText is an exit code as DISM's codes are written: an HRESULT (the
// exit code of a failed dism.exe is one, read as an unsigned 32-bit value)
// in hex, a small code in decimal.
func exitCodeText(code int) string {
	u := uint32(code)
	if u > 0xffff {
		return "0x" + strconv.FormatUint(uint64(u), 16)
	}
	return strconv.Itoa(code)
}

// header is DISM's banner and the image lines every command prints first.
func isBanner(line string) bool {
	return strings.HasPrefix(line, "Deployment Image Servicing and Management tool") ||
		strings.HasPrefix(line, "Version:") || strings.HasPrefix(line, "Image Version:")
}

// keyValue splits "Key : value" (DISM pads the colon with spaces).
func keyValue(line string) (string, string, bool) {
	k, v, ok := strings.Cut(line, ":")
	if !ok {
		return "", "", false
	}
	v = strings.TrimSpace(v)
	if v == "<undefined>" {
		// What DISM prints for a value the image does not record.
		v = ""
	}
	return strings.TrimSpace(k), v, true
}

// parseWimInfo reads /Get-WimInfo: "Index : N" starts an image; the keys
// that follow describe it. The languages are listed one per line after
// "Languages :", each perhaps with "(Default)".
func parseWimInfo(out []byte) []engine.Index {
	var images []engine.Index
	var cur *engine.Index
	inLanguages := false
	for _, line := range lines(out) {
		k, v, ok := keyValue(line)
		if !ok {
			if inLanguages && cur != nil && !isBanner(line) && !strings.HasPrefix(line, "The operation") {
				lang := strings.TrimSpace(strings.TrimSuffix(line, "(Default)"))
				if lang != "" && !strings.ContainsAny(lang, " ") {
					cur.Languages = append(cur.Languages, lang)
				}
			}
			continue
		}
		inLanguages = false
		if k == "Index" {
			n, err := strconv.Atoi(v)
			if err != nil {
				continue
			}
			images = append(images, engine.Index{Index: n})
			cur = &images[len(images)-1]
			continue
		}
		if cur == nil {
			continue
		}
		switch k {
		case "Name":
			cur.Name = v
		case "Description":
			cur.Description = v
		case "Size":
			cur.TotalBytes = parseBytes(v)
		case "Architecture":
			cur.Arch = architecture(v)
		case "Version":
			cur.Version = v
			if parts := strings.Split(v, "."); len(parts) >= 3 {
				if b, err := strconv.ParseUint(parts[2], 10, 32); err == nil {
					cur.Build = uint32(b)
				}
			}
		case "ServicePack Build":
			// 10.0.19041 and ServicePack Build 1151 make 10.0.19041.1151.
			if strings.Count(cur.Version, ".") == 2 && v != "" {
				cur.Version += "." + v
			}
		case "Edition":
			cur.Edition = v
		case "Languages":
			inLanguages = true
			if v != "" {
				cur.Languages = append(cur.Languages, strings.TrimSpace(strings.TrimSuffix(v, "(Default)")))
			}
		}
	}
	return images
}

// parseBytes reads "15,356,469,873 bytes" whatever the digit grouping.
func parseBytes(v string) int64 {
	var digits strings.Builder
	for _, r := range v {
		if unicode.IsDigit(r) {
			digits.WriteRune(r)
		} else if unicode.IsLetter(r) {
			break
		}
	}
	n, _ := strconv.ParseInt(digits.String(), 10, 64)
	return n
}

func architecture(v string) osvcv1.Architecture {
	switch strings.ToLower(v) {
	case "x64", "amd64":
		return osvcv1.Architecture_ARCHITECTURE_X64
	case "x86":
		return osvcv1.Architecture_ARCHITECTURE_X86
	case "arm64":
		return osvcv1.Architecture_ARCHITECTURE_ARM64
	}
	return osvcv1.Architecture_ARCHITECTURE_UNSPECIFIED
}

// parsePackages reads /Get-Packages in list form: "Package Identity : …"
// starts a package, "State", "Release Type" and "Install Time" describe it.
func parsePackages(out []byte) []engine.Installed {
	var pkgs []engine.Installed
	var cur *engine.Installed
	for _, line := range lines(out) {
		k, v, ok := keyValue(line)
		if !ok {
			continue
		}
		switch k {
		case "Package Identity":
			pkgs = append(pkgs, engine.Installed{Identity: v, KB: kbOf(v)})
			cur = &pkgs[len(pkgs)-1]
		case "State":
			if cur != nil {
				cur.State = v
			}
		case "Install Time":
			if cur != nil {
				cur.InstallTime = parseInstallTime(v)
			}
		}
	}
	return pkgs
}

// kbRE finds a KB number in a package identity (Package_for_KB5005565~…).
var kbRE = regexp.MustCompile(`(?i)KB(\d{6,8})`)

func kbOf(identity string) string {
	if m := kbRE.FindStringSubmatch(identity); m != nil {
		return "KB" + m[1]
	}
	return ""
}

// parseInstallTime reads DISM's "6/17/2021 2:50 AM". DISM writes it in
// the system's date format even with /English: "06/09/2024 04:11" from a
// server with a day-first locale reads as June 9, which may be September 6.
// osvc shows it and decides nothing on it.
func parseInstallTime(v string) time.Time {
	for _, layout := range []string{"1/2/2006 3:04 PM", "1/2/2006 15:04", "2006-01-02 15:04"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t
		}
	}
	return time.Time{}
}

// mounted is one image /Get-MountedWimInfo lists.
type mounted struct {
	Dir, ImageFile string
	Index          int
	ReadWrite      bool
	Status         string
}

// parseMounted reads /Get-MountedWimInfo: "Mount Dir : …" starts an image.
func parseMounted(out []byte) []mounted {
	var ms []mounted
	var cur *mounted
	for _, line := range lines(out) {
		k, v, ok := keyValue(line)
		if !ok {
			continue
		}
		// "Mount Dir : C:\mount" holds a second colon, in the drive: the
		// value is everything after the first.
		switch k {
		case "Mount Dir":
			ms = append(ms, mounted{Dir: v})
			cur = &ms[len(ms)-1]
		case "Image File":
			if cur != nil {
				cur.ImageFile = v
			}
		case "Image Index":
			if cur != nil {
				cur.Index, _ = strconv.Atoi(v)
			}
		case "Mounted Read/Write":
			if cur != nil {
				cur.ReadWrite = strings.EqualFold(v, "Yes")
			}
		case "Status":
			if cur != nil {
				cur.Status = v
			}
		}
	}
	return ms
}
