package wimlib

import (
	"fmt"
	"testing"
)

func TestArchiveProgressIsReadFromRedrawnLines(t *testing.T) {
	t.Parallel()
	// As wimlib-imagex 1.14 prints an export to a pipe: a first line, then
	// the progress line redrawn with '\r', each write cut anywhere.
	out := "Using LZX compression with 2 threads\n" +
		"\rArchiving file data: 0 MiB of 28 MiB (0%) done" +
		"\rArchiving file data: 0 MiB of 28 MiB (0%) done" +
		"\rArchiving file data: 14 MiB of 28 MiB (50%) done" +
		"\rArchiving file data: 28 MiB of 28 MiB (100%) done\n" +
		"\rArchiving file data: 900 KiB of 1023 KiB (87%) done\r" +
		"Archiving file data: 3 GiB of 4 GiB (75%) done\r" +
		"Archiving file data: 17 bytes of 20 bytes (85%) done\n"
	want := []string{"0/29360128", "14680064/29360128", "29360128/29360128", "921600/1047552", "3221225472/4294967296", "17/20"}
	for _, chunk := range []int{1, 7, len(out)} {
		t.Run(fmt.Sprintf("written %d bytes at a time", chunk), func(t *testing.T) {
			t.Parallel()
			var got []string
			w := newArchiveProgress(func(done, total int64) { got = append(got, fmt.Sprintf("%d/%d", done, total)) })
			for i := 0; i < len(out); i += chunk {
				if _, err := w.Write([]byte(out[i:min(i+chunk, len(out))])); err != nil {
					t.Fatal(err)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("progress %v, want %v", got, want)
			}
		})
	}
}

func FuzzArchiveProgress(f *testing.F) {
	f.Add([]byte("\rArchiving file data: 14 MiB of 28 MiB (50%) done"))
	f.Add([]byte("Archiving file data: 99999999999999 TiB of 1 TiB (50%) done\n"))
	f.Fuzz(func(t *testing.T, out []byte) {
		w := newArchiveProgress(func(done, total int64) {
			if done < 0 || total < 0 {
				t.Fatalf("negative progress %d of %d", done, total)
			}
		})
		if _, err := w.Write(out); err != nil {
			t.Fatal(err)
		}
	})
}
