package dism

import (
	"slices"
	"strings"
	"testing"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

// These tests pin the parsers' mechanics on small inputs; the corpus test
// (corpus_test.go) runs them on real recorded dism.exe output.

func TestProgressIsReadFromRedrawnAndWrappedBars(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		writes []string
		want   []int
	}{
		{"bars redrawn in place with a carriage return",
			[]string{"Mounting image\r\n[==                         4.0%                           ]\r[=====                     10.0%                           ]\r[==========================100.0%==========================]\r\n"},
			[]int{4, 10, 100}},
		{"a bar cut across writes",
			[]string{"[=====    ", "   42.", "0%      ]\r", "[==========================100.0%===", "=======================]\r\n"},
			[]int{42, 100}},
		{"a bar wrapped across lines on a narrow console",
			[]string{"[==========================\r\n100.0%==========================]\r\n"},
			[]int{100}},
		{"a decimal comma", []string{"[====   37,5%   ]\r"}, []int{37}},
		{"the same percent twice is reported once", []string{"[= 5.0% ]\r[= 5.0% ]\r[= 6.0% ]\r"}, []int{5, 6}},
		{"no bar", []string{"The operation completed successfully.\r\n"}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got []int
			w := newProgressWriter(func(p int) { got = append(got, p) })
			for _, s := range tt.writes {
				if _, err := w.Write([]byte(s)); err != nil {
					t.Fatal(err)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("progress %v, want %v", got, tt.want)
			}
		})
	}
}

func TestResultReadsTheCodeAndMessageInAnyLanguage(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name    string
		exit    int
		out     string
		code    string
		message string
		busy    bool
	}{
		{"an HRESULT with its message", int(uint32(0x800f081e)),
			"Processing 1 of 1 - Adding package Package_for_KB1~31bf3856ad364e35~amd64~~1.0\r\n[==========================100.0%==========================]\r\nAn error occurred - Package_for_KB1 Error: 0x800f081e\r\n\r\nError: 0x800F081E\r\n\r\nThe specified package is not applicable to this image.\r\n\r\nThe DISM log file can be found at C:\\Windows\\Logs\\DISM\\dism.log\r\n",
			"0x800f081e", "The specified package is not applicable to this image.", false},
		{"a Win32 code in decimal", 50, "\r\nError: 50\r\n\r\nThe request is not supported.\r\n\r\nThe DISM log file can be found at C:\\Windows\\Logs\\DISM\\dism.log\r\n",
			"50", "The request is not supported.", false},
		{"German", 2, "\r\nFehler: 0xc1420117\r\n\r\nDas Verzeichnis konnte nicht vollständig aufgehoben werden.\r\n\r\nDie DISM-Protokolldatei befindet sich unter C:\\Windows\\Logs\\DISM\\dism.log\r\n",
			"0xc1420117", "Das Verzeichnis konnte nicht vollständig aufgehoben werden.", true},
		{"French with a space before the colon", 2, "\r\nErreur : 0x800f0806\r\n\r\nL’opération n’a pas pu être effectuée.\r\n",
			"0x800f0806", "L’opération n’a pas pu être effectuée.", false},
		{"only an inline code", 1, "An error occurred - Package_for_KB2 Error: 0x800f0823\r\n",
			"0x800f0823", "An error occurred - Package_for_KB2 Error: 0x800f0823", false},
		{"no code at all: the exit code as an HRESULT", int(uint32(0x80070070)), "Something went wrong.\r\n",
			"0x80070070", "Something went wrong.", false},
		{"success", 0, "The operation completed successfully.\r\n", "", "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := parseResult(tt.exit, []byte(tt.out))
			if r.Code != tt.code || r.Message != tt.message || r.busy() != tt.busy || r.OK() != (tt.exit == 0) {
				t.Errorf("parseResult = %+v (busy %t), want code %q message %q busy %t", r, r.busy(), tt.code, tt.message, tt.busy)
			}
		})
	}
}

func TestErrorsSayTheCodeFirstAndWhatToDo(t *testing.T) {
	t.Parallel()
	err := failure("/Add-Package", Result{ExitCode: 1, Code: codeNeedsNewerStack, Message: "An error occurred applying the package."})
	if got := err.Error(); !strings.HasPrefix(got, "dism /Add-Package: 0x800f0823: An error occurred applying the package.") || !strings.Contains(got, "servicing stack") {
		t.Errorf("Error() = %q", got)
	}
	other := failure("/Export-Image", Result{ExitCode: 1, Code: "0x80070020", Message: "The process cannot access the file because it is being used by another process."})
	if got := other.Error(); got != "dism /Export-Image: 0x80070020: The process cannot access the file because it is being used by another process." {
		t.Errorf("an unknown code is kept verbatim: %q", got)
	}
}

func TestWimInfoListsIndexesWithTheirDetails(t *testing.T) {
	t.Parallel()
	out := "\r\nDeployment Image Servicing and Management tool\r\nVersion: 10.0.22621.1\r\n\r\nDetails for image : D:\\install.wim\r\n\r\n" +
		"Index : 3\r\nName : Windows 11 Enterprise\r\nDescription : Windows 11 Enterprise\r\nSize : 16,470,563,211 bytes\r\nWIM Bootable : No\r\n" +
		"Architecture : x64\r\nHal : <undefined>\r\nVersion : 10.0.22631\r\nServicePack Build : 2428\r\nServicePack Level : 0\r\nEdition : Enterprise\r\n" +
		"Languages :\r\n        en-US (Default)\r\n        de-DE\r\nCreated : 10/9/2023 - 3:12:09 PM\r\n\r\nThe operation completed successfully.\r\n"
	got := parseWimInfo([]byte(out))
	if len(got) != 1 {
		t.Fatalf("indexes %v, want 1", got)
	}
	ix := got[0]
	if ix.Index != 3 || ix.Name != "Windows 11 Enterprise" || ix.Arch != osvcv1.Architecture_ARCHITECTURE_X64 || ix.Build != 22631 ||
		ix.Version != "10.0.22631.2428" || ix.Edition != "Enterprise" || ix.TotalBytes != 16470563211 || !slices.Equal(ix.Languages, []string{"en-US", "de-DE"}) {
		t.Errorf("index = %+v", ix)
	}
}

func TestPackagesAndMountsAreListed(t *testing.T) {
	t.Parallel()
	pkgs := parsePackages([]byte("Packages listing:\r\n\r\nPackage Identity : Package_for_KB5005565~31bf3856ad364e35~amd64~~19041.1237.1.4\r\nState : Installed\r\nRelease Type : Security Update\r\nInstall Time : 9/15/2021 6:06 PM\r\n\r\n" +
		"Package Identity : Package_for_RollupFix~31bf3856ad364e35~amd64~~19041.1237.1.4\r\nState : Superseded\r\nRelease Type : Update\r\nInstall Time : 9/15/2021 6:06 PM\r\n"))
	if len(pkgs) != 2 || pkgs[0].KB != "KB5005565" || pkgs[0].State != "Installed" || pkgs[0].InstallTime.Year() != 2021 || pkgs[1].State != "Superseded" || pkgs[1].KB != "" {
		t.Errorf("packages = %+v", pkgs)
	}
	ms := parseMounted([]byte("Mounted images:\r\n\r\nMount Dir : D:\\OfflineImageServicing\\r-1\\mount\r\nImage File : D:\\OfflineImageServicing\\r-1\\source.wim\r\nImage Index : 1\r\nMounted Read/Write : Yes\r\nStatus : Needs Remount\r\n"))
	if len(ms) != 1 || ms[0].Dir != `D:\OfflineImageServicing\r-1\mount` || ms[0].Index != 1 || !ms[0].ReadWrite || ms[0].Status != "Needs Remount" {
		t.Errorf("mounted = %+v", ms)
	}
	if !under(`d:/offlineimageservicing/R-1/Mount`, `D:\OfflineImageServicing\r-1`) || under(`D:\OfflineImageServicing\r-10\mount`, `D:\OfflineImageServicing\r-1`) {
		t.Error("under compares paths as Windows does")
	}
}
