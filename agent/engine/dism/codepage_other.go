//go:build !windows

package dism

// systemCodePage is UTF-8 off Windows, where only a stand-in for dism.exe
// runs.
func systemCodePage() int { return codePageUTF8 }
