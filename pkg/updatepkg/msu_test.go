package updatepkg

import (
	"strings"
	"testing"
	"unicode"
)

func FuzzParseProperties(f *testing.F) {
	f.Add([]byte("KB Article Number=\"5005565\"\r\nProduct Name=\"Windows 10\"\r\n"))
	f.Add([]byte("\xff\xfeK\x00=\x00\"\x00v\x00\"\x00"))
	f.Add([]byte("Key=unquoted value\n\nOther = \" spaced \""))
	f.Fuzz(func(t *testing.T, data []byte) {
		props, err := parseProperties(data)
		if err != nil {
			return
		}
		for k, v := range props {
			if !propertyKeyPattern.MatchString(k) || len(v) > maxPropertyValueLen || strings.ContainsFunc(v, unicode.IsControl) {
				t.Fatalf("parseProperties kept %q=%q", k, v)
			}
		}
	})
}

func FuzzParseUnattend(f *testing.F) {
	f.Add([]byte(`<unattend xmlns="urn:schemas-microsoft-com:unattend"><servicing><package><assemblyIdentity name="Package_for_RollupFix" version="19041.1237.1.4" processorArchitecture="amd64" language="neutral" publicKeyToken="31bf3856ad364e35"/><source location="%configsetroot%\Windows10.0-KB5005565-x64.cab"/></package></servicing></unattend>`))
	f.Add([]byte(`<unattend/>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		pkgs, err := parseUnattend(data)
		if err != nil {
			return
		}
		for _, p := range pkgs {
			if p.Identity.validate(packageArchs) != nil || strings.ContainsAny(p.Source, `\/`) {
				t.Fatalf("parseUnattend kept %+v", p)
			}
		}
	})
}
