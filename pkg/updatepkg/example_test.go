package updatepkg_test

import (
	"fmt"
	"os"
	"time"

	"github.com/osvc/osvc/pkg/updatepkg"
)

func ExampleManifest_Marshal() {
	m := &updatepkg.Manifest{
		Identity: updatepkg.Identity{Name: "Package_for_RollupFix", PublicKeyToken: "31bf3856ad364e35",
			Arch: "amd64", Language: "neutral", Version: "22621.2715.1.8"},
		KB:               "KB5032190",
		Title:            "2023-11 Cumulative Update for Windows 11 Version 23H2 for x64-based Systems (KB5032190)",
		ReleaseType:      "Security Update",
		Released:         time.Date(2023, 11, 14, 0, 0, 0, 0, time.UTC),
		Products:         []string{"Windows 11, version 23H2"},
		ApplicableBuilds: []uint32{22621, 22631},
		Supersedes:       []string{"Package_for_RollupFix~31bf3856ad364e35~amd64~~22621.2428.1.10"},
		Components: []updatepkg.Component{{Name: "Microsoft-Windows-Kernel", Version: "10.0.22621.2715",
			Arch: "amd64", PublicKeyToken: "31bf3856ad364e35", Files: []string{"ntoskrnl.exe"}}},
	}
	mum, err := m.Marshal()
	if err != nil {
		panic(err)
	}
	os.Stdout.Write(mum)
	fmt.Println(m.Components[0].SxSName())
	man, err := updatepkg.MarshalComponentManifest(m.Components[0])
	if err != nil {
		panic(err)
	}
	os.Stdout.Write(man)
	// Output:
	// <?xml version="1.0" encoding="utf-8" standalone="yes"?>
	// <assembly xmlns="urn:schemas-microsoft-com:asm.v3" manifestVersion="1.0" description="Fix for KB5032190" displayName="2023-11 Cumulative Update for Windows 11 Version 23H2 for x64-based Systems (KB5032190)" company="Microsoft Corporation" copyright="Microsoft Corporation" supportInformation="https://support.microsoft.com/help/5032190" creationTimeStamp="2023-11-14T00:00:00Z" lastUpdateTimeStamp="2023-11-14T00:00:00Z">
	//   <assemblyIdentity name="Package_for_RollupFix" version="22621.2715.1.8" processorArchitecture="amd64" language="neutral" publicKeyToken="31bf3856ad364e35" buildType="release"/>
	//   <package identifier="KB5032190" releaseType="Security Update" restart="possible" permanence="removable">
	//     <customInformation>
	//       <product name="Windows 11, version 23H2"/>
	//     </customInformation>
	//     <parent buildCompare="EQ" revisionCompare="GE" integrate="separate" disposition="detect">
	//       <assemblyIdentity name="Microsoft-Windows-Foundation-Package" version="10.0.22621.0" processorArchitecture="amd64" language="neutral" publicKeyToken="31bf3856ad364e35" buildType="release"/>
	//     </parent>
	//     <parent buildCompare="EQ" revisionCompare="GE" integrate="separate" disposition="detect">
	//       <assemblyIdentity name="Microsoft-Windows-Foundation-Package" version="10.0.22631.0" processorArchitecture="amd64" language="neutral" publicKeyToken="31bf3856ad364e35" buildType="release"/>
	//     </parent>
	//     <supersededPackages>
	//       <assemblyIdentity name="Package_for_RollupFix" version="22621.2428.1.10" processorArchitecture="amd64" language="neutral" publicKeyToken="31bf3856ad364e35" buildType="release"/>
	//     </supersededPackages>
	//     <update name="Microsoft-Windows-Kernel">
	//       <component>
	//         <assemblyIdentity name="Microsoft-Windows-Kernel" version="10.0.22621.2715" processorArchitecture="amd64" language="neutral" publicKeyToken="31bf3856ad364e35" buildType="release" versionScope="nonSxS"/>
	//       </component>
	//     </update>
	//   </package>
	// </assembly>
	// amd64_microsoft-windows-kernel_31bf3856ad364e35_10.0.22621.2715_none_389effbc80e79f41
	// <?xml version="1.0" encoding="utf-8" standalone="yes"?>
	// <assembly xmlns="urn:schemas-microsoft-com:asm.v3" manifestVersion="1.0">
	//   <assemblyIdentity name="Microsoft-Windows-Kernel" version="10.0.22621.2715" processorArchitecture="amd64" language="neutral" publicKeyToken="31bf3856ad364e35" buildType="release" versionScope="nonSxS"/>
	//   <file name="ntoskrnl.exe" sourceName="ntoskrnl.exe"/>
	// </assembly>
}
