package dism

import "golang.org/x/sys/windows"

var procGetOEMCP = windows.NewLazySystemDLL("kernel32.dll").NewProc("GetOEMCP")

// systemCodePage is the OEM code page, the one dism.exe writes to a pipe in.
func systemCodePage() int {
	if procGetOEMCP.Find() != nil {
		return codePageUTF8
	}
	cp, _, _ := procGetOEMCP.Call()
	return int(cp)
}
