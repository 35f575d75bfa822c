package dism

import (
	"fmt"
	"strings"
)

// The codes osvc acts on. Every other code is kept as DISM printed it, with
// its message.
const (
	// codeNotApplicable (CBS_E_NOT_APPLICABLE): the package does not apply
	// to the image. Not a failure: the update is NOT_APPLICABLE.
	codeNotApplicable = "0x800f081e"
	// codeNeedsNewerStack (CBS_E_NEW_SERVICING_STACK_REQUIRED): the image's
	// servicing stack is too old for the package.
	codeNeedsNewerStack = "0x800f0823"
	// codeSourceMissing (CBS_E_SOURCE_MISSING): files the package needs are
	// not in the image or the package.
	codeSourceMissing = "0x800f081f"
	// codePending (CBS_E_PENDING): the image has pending operations, which
	// /ResetBase cannot clean up.
	codePending = "0x800f0806"
	// codeMountBusy and codeMountInUse: the mount folder or the image is
	// still in use (a file open in it, a mount not yet released). Worth
	// trying again after a pause.
	codeMountBusy  = "0xc1420114"
	codeMountInUse = "0xc1420117"
	// codeDiskFull (ERROR_DISK_FULL) and codeNoSpace (CBS_E_INSUFFICIENT_DISK_SPACE):
	// the drive ran out of space.
	codeDiskFull = "0x80070070"
	codeNoSpace  = "0x800f0828"
	// win32DiskFull is ERROR_DISK_FULL as /Unmount-Image /Commit prints it,
	// in decimal ("Error: 112").
	win32DiskFull = "112"
	// codeAccessDenied, in either form: dism.exe runs only elevated.
	codeAccessDenied  = "0x80070005"
	win32AccessDenied = "5"
)

// Error is a DISM command that failed: the operation, DISM's code and its
// own message, and what to do about it where osvc knows.
type Error struct {
	// Op is the DISM verb, e.g. /Add-Package.
	Op string
	Result
	// Hint says what to do, when osvc knows.
	Hint string
}

// Error reads "dism /Add-Package: 0x800f081f: The source files could not
// be found. (exit code 2148468767)": the code first, so a result that
// keeps only the start still says it.
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "dism %s: %s", e.Op, e.Code)
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	if e.Hint != "" {
		fmt.Fprintf(&b, " (%s)", e.Hint)
	}
	return b.String()
}

// busy tells a failure worth trying again: the mount folder or image is
// still in use.
func (r Result) busy() bool { return r.Code == codeMountBusy || r.Code == codeMountInUse }

// hint says what to do about a failure osvc knows.
func hint(r Result) string {
	switch r.Code {
	case codeNeedsNewerStack:
		return "the image's servicing stack is too old for this package: schedule the servicing stack update with it; osvc applies it first"
	case codeSourceMissing:
		return "files the package needs are missing: the package may be damaged or for another build; import it again"
	case codePending:
		return "the image has pending operations: service it without remove superseded, or from a version without pending operations"
	case codeDiskFull, codeNoSpace, win32DiskFull:
		return "the drive is full: free space on it or choose another drive"
	case codeMountBusy, codeMountInUse:
		return "the mount folder is still in use: close what holds files in it"
	case codeAccessDenied, win32AccessDenied:
		return "DISM needs administrator rights: run osvc-agent as its Windows service (LocalSystem) or from an elevated prompt"
	}
	return ""
}

// failure is the error of a command that failed.
func failure(op string, r Result) *Error {
	return &Error{Op: op, Result: r, Hint: hint(r)}
}
