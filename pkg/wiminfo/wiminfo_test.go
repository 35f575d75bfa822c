package wiminfo

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unicode/utf16"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

func run(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("%s %v: %v: %s", name, args, err, ee.Stderr)
		}
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return out
}

// imageTree makes a small folder to capture.
func imageTree(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func props(kv ...string) []string {
	var args []string
	for i := 0; i+1 < len(kv); i += 2 {
		args = append(args, "--image-property", kv[i]+"="+kv[i+1])
	}
	return args
}

var (
	twoIndexOnce sync.Once
	twoIndexWIM  []byte
)

// twoIndex captures a two-index WIM once per test binary: a 23H2 x64
// Professional image and a 24H2 arm64 Enterprise one with two languages.
func twoIndex(t testing.TB) string {
	t.Helper()
	twoIndexOnce.Do(func() {
		dir := t.TempDir()
		wim := filepath.Join(dir, "install.wim")
		first := imageTree(t, map[string]string{"Windows/System32/ntoskrnl.exe": strings.Repeat("kernel", 1000), "Users/readme.txt": "hi"})
		run(t, "wimlib-imagex", append([]string{"capture", first, wim, "Windows 11 Pro", "Windows 11 Pro 23H2"},
			props("WINDOWS/ARCH", "9", "WINDOWS/EDITIONID", "Professional", "WINDOWS/LANGUAGES/LANGUAGE", "en-US",
				"WINDOWS/VERSION/MAJOR", "10", "WINDOWS/VERSION/MINOR", "0", "WINDOWS/VERSION/BUILD", "22631",
				"WINDOWS/VERSION/SPBUILD", "2428", "FLAGS", "Professional")...)...)
		second := imageTree(t, map[string]string{"Windows/System32/hal.dll": "hal"})
		run(t, "wimlib-imagex", append([]string{"append", second, wim, "Windows 11 Enterprise"},
			props("WINDOWS/ARCH", "12", "WINDOWS/EDITIONID", "Enterprise", "WINDOWS/LANGUAGES/LANGUAGE[1]", "en-US",
				"WINDOWS/LANGUAGES/LANGUAGE[2]", "de-DE", "WINDOWS/VERSION/MAJOR", "10", "WINDOWS/VERSION/MINOR", "0",
				"WINDOWS/VERSION/BUILD", "26100", "WINDOWS/VERSION/SPBUILD", "1742")...)...)
		data, err := os.ReadFile(wim)
		if err != nil {
			t.Fatal(err)
		}
		twoIndexWIM = data
	})
	if twoIndexWIM == nil {
		t.Fatal("capturing the test WIM failed in another test")
	}
	p := filepath.Join(t.TempDir(), "install.wim")
	if err := os.WriteFile(p, twoIndexWIM, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReadFileDescribesEveryIndex(t *testing.T) {
	t.Parallel()
	wim := twoIndex(t)
	got, err := ReadFile(wim)
	if err != nil {
		t.Fatal(err)
	}
	want := []Image{
		{
			Index: 1, Name: "Windows 11 Pro", Description: "Windows 11 Pro 23H2", Edition: "Professional",
			Arch: osvcv1.Architecture_ARCHITECTURE_X64, Version: "10.0.22631.2428", Build: 22631,
			Languages: []string{"en-US"},
		},
		{
			Index: 2, Name: "Windows 11 Enterprise", Edition: "Enterprise",
			Arch: osvcv1.Architecture_ARCHITECTURE_ARM64, Version: "10.0.26100.1742", Build: 26100,
			Languages: []string{"en-US", "de-DE"},
		},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d indexes, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		if got[i].TotalBytes <= 0 {
			t.Errorf("index %d: TotalBytes = %d, want the captured size", i+1, got[i].TotalBytes)
		}
		want[i].TotalBytes = got[i].TotalBytes
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("index %d:\n got %v\nwant %v", i+1, got[i], want[i])
		}
	}
	// wimlib's own view of the sizes, to check TOTALBYTES is the image's.
	info := string(run(t, "wimlib-imagex", "info", wim, "1"))
	if !strings.Contains(info, "Total Bytes:") || !strings.Contains(info, " "+strconv.FormatInt(got[0].TotalBytes, 10)+"\n") {
		t.Errorf("wimlib-imagex info does not report total bytes %d:\n%s", got[0].TotalBytes, info)
	}
}

func TestParseXMLReadsWimlibInfoOutput(t *testing.T) {
	t.Parallel()
	wim := twoIndex(t)
	out := run(t, "wimlib-imagex", "info", wim, "--xml")
	if !bytes.HasPrefix(out, []byte{0xFF, 0xFE}) {
		t.Fatalf("wimlib-imagex info --xml no longer prints UTF-16LE with a BOM: % x", out[:min(8, len(out))])
	}
	fromXML, err := ParseXML(out)
	if err != nil {
		t.Fatal(err)
	}
	fromFile, err := ReadFile(wim)
	if err != nil {
		t.Fatal(err)
	}
	if len(fromXML) != len(fromFile) {
		t.Fatalf("ParseXML found %d indexes, ReadFile %d", len(fromXML), len(fromFile))
	}
	for i := range fromXML {
		if !reflect.DeepEqual(fromXML[i], fromFile[i]) {
			t.Errorf("index %d: ParseXML %v, ReadFile %v", i+1, fromXML[i], fromFile[i])
		}
	}
}

func TestParseXMLAcceptsEncodingsAndNumberForms(t *testing.T) {
	t.Parallel()
	const doc = `<WIM><TOTALBYTES>100</TOTALBYTES>
<IMAGE INDEX="2"><NAME>Second</NAME><TOTALBYTES>0x10</TOTALBYTES></IMAGE>
<IMAGE INDEX="1"><NAME> First </NAME><FLAGS>ServerDatacenter</FLAGS><TOTALBYTES>42</TOTALBYTES>
<WINDOWS><ARCH>0</ARCH><LANGUAGES><DEFAULT>fr-FR</DEFAULT></LANGUAGES>
<VERSION><MAJOR>10</MAJOR><MINOR>0</MINOR><BUILD>20348</BUILD></VERSION></WINDOWS></IMAGE></WIM>`
	utf16le := func(s string, bom bool) []byte {
		var b []byte
		if bom {
			b = append(b, 0xFF, 0xFE)
		}
		for _, r := range s {
			b = binary.LittleEndian.AppendUint16(b, uint16(r))
		}
		return b
	}
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"UTF-8", []byte(doc)},
		{"UTF-8 with a declaration", []byte(`<?xml version="1.0" encoding="UTF-16"?>` + doc)},
		{"UTF-16LE with BOM", utf16le(doc, true)},
		{"UTF-16LE without BOM and trailing NULs", append(utf16le(doc, false), 0, 0, 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseXML(tc.data)
			if err != nil {
				t.Fatal(err)
			}
			want := []Image{
				{Index: 1, Name: "First", Edition: "ServerDatacenter", Arch: osvcv1.Architecture_ARCHITECTURE_X86,
					Version: "10.0.20348.0", Build: 20348, Languages: []string{"fr-FR"}, TotalBytes: 42},
				{Index: 2, Name: "Second", TotalBytes: 16},
			}
			if len(got) != 2 || !reflect.DeepEqual(got, want) {
				t.Errorf("got %v\nwant %v", got, want)
			}
		})
	}
}

func TestParseXMLRejectsDamagedInfo(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, doc string }{
		{"truncated XML", `<WIM><IMAGE INDEX="1"><NAME>x`},
		{"not WIM XML", `<html></html>`},
		{"a duplicate index", `<WIM><IMAGE INDEX="1"/><IMAGE INDEX="1"/></WIM>`},
		{"a gap in indexes", `<WIM><IMAGE INDEX="1"/><IMAGE INDEX="3"/></WIM>`},
		{"a bad architecture", `<WIM><IMAGE INDEX="1"><WINDOWS><ARCH>x64</ARCH></WINDOWS></IMAGE></WIM>`},
		{"a bad build", `<WIM><IMAGE INDEX="1"><WINDOWS><VERSION><BUILD>-1</BUILD></VERSION></WINDOWS></IMAGE></WIM>`},
		{"a zero index", `<WIM><IMAGE INDEX="0"/></WIM>`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := ParseXML([]byte(tc.doc))
			if !errors.Is(err, ErrDamaged) || !strings.HasPrefix(err.Error(), "WIM XML info is damaged: ") {
				t.Errorf("ParseXML = %v, want a \"WIM XML info is damaged: ...\" error", err)
			}
		})
	}
}

func TestReadRejectsFilesThatAreNotWIMs(t *testing.T) {
	t.Parallel()
	wim, err := os.ReadFile(twoIndex(t))
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	modified := func(f func(b []byte)) []byte {
		b := append([]byte(nil), wim...)
		f(b)
		return b
	}
	xmlOffset := le.Uint64(wim[80:])
	for _, tc := range []struct {
		name     string
		data     []byte
		want     error
		contains string
	}{
		{"an executable", []byte("MZ\x90\x00\x03\x00\x00\x00 this program cannot be run in DOS mode"), ErrNotWIM, "not a WIM file"},
		{"an empty file", nil, ErrNotWIM, "not a WIM file"},
		{"a truncated header", wim[:100], ErrDamaged, "truncated"},
		{"a truncated file", wim[:xmlOffset+10], ErrDamaged, "truncated"},
		{"XML info beyond the end", modified(func(b []byte) { le.PutUint64(b[80:], 1<<40) }), ErrDamaged, "outside"},
		{"a wrong image count", modified(func(b []byte) { le.PutUint32(b[44:], 3) }), ErrDamaged, "counts 3 images"},
		{"compressed XML info", modified(func(b []byte) { b[79] |= reshdrCompressed }), nil, "compressed"},
		{"a pipable WIM", modified(func(b []byte) { copy(b, "WLPWM\x00\x00\x00") }), nil, "pipable"},
		{"scrambled XML", modified(func(b []byte) { b[xmlOffset+20] = '&' }), ErrDamaged, "WIM XML info is damaged"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Read(bytes.NewReader(tc.data), int64(len(tc.data)))
			if err == nil {
				t.Fatal("no error")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.contains) {
				t.Errorf("error %q does not mention %q", err, tc.contains)
			}
		})
	}
	if _, err := ReadFile(filepath.Join(t.TempDir(), "missing.wim")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadFile(missing) = %v, want ErrNotExist", err)
	}
}

func FuzzParseXML(f *testing.F) {
	f.Add([]byte(`<WIM><IMAGE INDEX="1"><NAME>n</NAME><WINDOWS><ARCH>9</ARCH><VERSION><BUILD>22631</BUILD></VERSION></WINDOWS></IMAGE></WIM>`))
	f.Add([]byte{0xFF, 0xFE, '<', 0, 'W', 0, 'I', 0, 'M', 0, '/', 0, '>', 0})
	f.Add([]byte{0xFE, 0xFF, 0, '<'})
	f.Fuzz(func(t *testing.T, data []byte) {
		idx, err := ParseXML(data)
		if err != nil {
			if !errors.Is(err, ErrDamaged) {
				t.Fatalf("error %v does not wrap ErrDamaged", err)
			}
			return
		}
		for i, x := range idx {
			if x.Index != i+1 {
				t.Fatalf("index %d numbered %d", i+1, x.Index)
			}
		}
	})
}

func FuzzRead(f *testing.F) {
	// A tiny WIM: the fuzzer slows to a crawl on seeds of many kilobytes.
	dir := f.TempDir()
	wim := filepath.Join(dir, "tiny.wim")
	run(f, "wimlib-imagex", append([]string{"capture", imageTree(f, map[string]string{"a": "hi"}), wim, "Tiny"},
		props("WINDOWS/ARCH", "9", "WINDOWS/VERSION/BUILD", "22631")...)...)
	data, err := os.ReadFile(wim)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add(data[:headerSize])
	f.Fuzz(func(t *testing.T, data []byte) {
		idx, err := Read(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		for i, x := range idx {
			if x.Index != i+1 {
				t.Fatalf("index %d numbered %d", i+1, x.Index)
			}
		}
	})
}

func TestParseXMLRefusesWhatOnlyHostileInfoHolds(t *testing.T) {
	t.Parallel()
	image := func(body string) string { return `<WIM><IMAGE INDEX="1">` + body + `</IMAGE></WIM>` }
	for _, tc := range []struct{ name, doc, contains string }{
		{"elements nested deeper than real info", image(strings.Repeat("<a>", maxXMLDepth) + strings.Repeat("</a>", maxXMLDepth)), "nest more than"},
		{"unclosed nested elements", image(strings.Repeat("<a>", 10*maxXMLDepth)), "nest more than"},
		{"a name longer than a line", image("<NAME>" + strings.Repeat("A", maxXMLTextBytes+1) + "</NAME>"), "text is"},
		{"more images than a WIM holds", "<WIM>" + strings.Repeat("<IMAGE/>", MaxImages+1) + "</WIM>", "more than 1000 images"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := ParseXML([]byte(tc.doc))
			if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), tc.contains) {
				t.Errorf("ParseXML = %v, want a damage error mentioning %q", err, tc.contains)
			}
		})
	}
}

func TestParseXMLAcceptsInfoUpToItsBounds(t *testing.T) {
	t.Parallel()
	// Unknown elements nested to the limit, a name of the longest text, and
	// as many images as a WIM may hold.
	nested := strings.Repeat("<a>", maxXMLDepth-2) + strings.Repeat("</a>", maxXMLDepth-2)
	name := strings.Repeat("N", maxXMLTextBytes)
	doc := `<WIM><IMAGE INDEX="1"><NAME>` + name + `</NAME>` + nested + `</IMAGE>` +
		strings.Repeat("<IMAGE/>", MaxImages-1) + `</WIM>`
	got, err := ParseXML([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != MaxImages || got[0].Name != name {
		t.Errorf("got %d images, the first named %.10q…; want %d, the first named N…", len(got), got[0].Name, MaxImages)
	}
}

func TestDecodeTextReadsUTF16AsUTF16Decode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		units []uint16
	}{
		{"ASCII", utf16.Encode([]rune("<WIM/>"))},
		{"letters beyond Latin-1", utf16.Encode([]rune("<WIM>Привет 日本</WIM>"))},
		{"a surrogate pair", utf16.Encode([]rune("<WIM>😀</WIM>"))},
		{"a lone high surrogate", []uint16{'<', 0xD83D, 'x', '>'}},
		{"a lone low surrogate", []uint16{'<', 0xDE00, '>'}},
		{"a high surrogate at the end", []uint16{'<', 0xD83D}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			le := []byte{0xFF, 0xFE}
			be := []byte{0xFE, 0xFF}
			for _, u := range tc.units {
				le = binary.LittleEndian.AppendUint16(le, u)
				be = binary.BigEndian.AppendUint16(be, u)
			}
			want := string(utf16.Decode(tc.units))
			for _, data := range [][]byte{le, be} {
				got, err := decodeText(data)
				if err != nil {
					t.Fatal(err)
				}
				if string(got) != want {
					t.Errorf("decodeText(% x) = %q, want %q", data, got, want)
				}
			}
		})
	}
}

func TestReadRefusesImageCountsBeyondTheHeaderEarly(t *testing.T) {
	t.Parallel()
	wim, err := os.ReadFile(twoIndex(t))
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	for _, tc := range []struct {
		name     string
		count    uint32
		contains string
	}{
		{"a header counting more images than a WIM holds", MaxImages + 1, "more than the 1000 osvc reads"},
		{"XML describing more images than the header counts", 1, "the header counts 1 images, the XML describes more"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := append([]byte(nil), wim...)
			le.PutUint32(b[44:], tc.count)
			_, err := Read(bytes.NewReader(b), int64(len(b)))
			if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), tc.contains) {
				t.Errorf("Read = %v, want a damage error mentioning %q", err, tc.contains)
			}
		})
	}
}
