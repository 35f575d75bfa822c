// Package updatepkg reads and writes update packages: cabinets holding
// update.mum, component manifests and payload, and MSUs wrapping such
// cabinets. The shape follows Windows' own update packages closely enough
// that the words (identity, component, WinSxS folder, parent, releaseType)
// mean what an administrator expects, while staying simple enough for the
// wimlib engine to apply without Windows.
//
// # Package cabinet (.cab)
//
// A package is a cabinet (MSZIP; see package cab) with these members:
//
//	update.mum                        the package manifest (below)
//	<SxSName>.manifest                one per component: its identity and files
//	<SxSName>/<file>                  the component's payload, '\' or '/' separated
//
// where <SxSName> is Component.SxSName():
//
//	<arch>_<name>_<publicKeyToken>_<version>_none_<hash>, all lower case
//	hash = first 8 bytes, in hex, of SHA-256(lower("<name>~<token>~<arch>~~<version>"))
//
// e.g. amd64_microsoft-windows-kernel_31bf3856ad364e35_10.0.22621.2715_none_389effbc80e79f41.
// Members are matched as Windows compares names: ignoring case, '\' and
// '/' alike. Other members are read (their data must be whole) but not
// staged. Build writes update.mum first, then every component manifest,
// then the payload.
//
// # What Open refuses
//
// Open (and OpenAs) is the one reading of a package: the catalog records
// what it returns when a file is imported, and the engine installs what
// Stage then writes from the same reading. So everything the engine would
// refuse is refused at import, with an error wrapping ErrInvalid that names
// the file, says what is wrong and what to do:
//
//   - a damaged cabinet: a header or a member that runs past the data, a
//     block that fails its checksum or inflates to less than it declares
//     (Open reads every member's data; nothing is allocated by what a header
//     claims before the data backs it), a part of a multi-cabinet set;
//   - a member name that package winpath refuses: absolute, with a drive letter,
//     UNC or device prefix, "..", control characters, characters Windows
//     forbids, a trailing dot or space, a reserved device name (CON, aux.txt);
//   - two members that are one file on Windows (update.mum and UPDATE.MUM,
//     a/B.dll and A\b.dll), or a member that is a file where another needs
//     a folder;
//   - manifests with a document type or entity declaration (<!DOCTYPE>,
//     billion laughs, external entities), larger than 4 MiB, or not as
//     described below; a component listed twice, a file listed twice, a
//     listed file the package does not hold, a component manifest that does
//     not match update.mum;
//   - manifests adding up to more than 64 MiB in one file (every package of
//     an MSU together), judged from the sizes the cabinet declares before
//     they are decompressed; each manifest is parsed as it is read, so one
//     is held in memory at a time;
//   - an MSU inner cabinet that would decompress to more than twice the
//     MSU (plus 1 MiB), refused before anything is written to a temporary
//     file: cabinets do not compress, so only a decompression bomb does that;
//   - a component of an architecture the package's cannot carry (below);
//   - names the engine cannot write into an image: the package's
//     <identity>.mum or a component's WinSxS folder name refused by winpath;
//   - in update.mum, a <parent buildCompare> other than EQ or GE, a nested
//     package whose identity is not one, an <update> name with control
//     characters or over 200 bytes;
//   - in an MSU, a properties file over 64 KiB, not Key="value" lines of
//     UTF-8 or UTF-16 (with a byte-order mark), a key twice, a value over
//     4 KiB or with control characters, two properties files; an unattend
//     .xml over 1 MiB, with a document type, not an <unattend> of its
//     namespace, or naming a package without a valid identity; metadata
//     that names a cabinet the MSU does not hold or a package its cabinet
//     does not hold, or a processor architecture other than its package's.
//
// # Architectures
//
// A package of each architecture carries the component architectures
// Windows itself installs on that platform, as the WinSxS folders of
// Windows images show (x86_microsoft.windows.common-controls and
// x86_microsoft-windows-servicingstack on x64, amd64_ side-by-side
// assemblies on arm64 for x64 emulation):
//
//	amd64    amd64, wow64, x86, msil, neutral
//	arm64    arm64, wow64, x86, amd64, msil, neutral
//	x86      x86, msil, neutral
//	neutral  msil, neutral (a neutral package applies to every image)
//
// Any other component makes the catalog's architecture for the package a
// lie the engine would act on, so Open refuses it.
//
// # update.mum
//
// UTF-8 XML (a byte-order mark is accepted):
//
//	<?xml version="1.0" encoding="utf-8" standalone="yes"?>
//	<assembly xmlns="urn:schemas-microsoft-com:asm.v3" manifestVersion="1.0"
//	    description="Fix for KB5032190"
//	    displayName="2023-11 Cumulative Update for Windows 11 Version 23H2 for x64-based Systems (KB5032190)"
//	    company="Microsoft Corporation" copyright="Microsoft Corporation"
//	    supportInformation="https://support.microsoft.com/help/5032190"
//	    creationTimeStamp="2023-11-14T00:00:00Z" lastUpdateTimeStamp="2023-11-14T00:00:00Z">
//	  <assemblyIdentity name="Package_for_RollupFix" version="22621.2715.1.8"
//	      processorArchitecture="amd64" language="neutral"
//	      publicKeyToken="31bf3856ad364e35" buildType="release"/>
//	  <package identifier="KB5032190" releaseType="Security Update"
//	      restart="possible" permanence="removable">
//	    <customInformation>
//	      <product name="Windows 11, version 23H2"/>
//	    </customInformation>
//	    <parent buildCompare="EQ" revisionCompare="GE" integrate="separate" disposition="detect">
//	      <assemblyIdentity name="Microsoft-Windows-Foundation-Package" version="10.0.22621.0"
//	          processorArchitecture="amd64" language="neutral"
//	          publicKeyToken="31bf3856ad364e35" buildType="release"/>
//	    </parent>
//	    <parent ...> (one per applicable OS build: version 10.0.<build>.0)
//	    <supersededPackages>
//	      <assemblyIdentity name="Package_for_RollupFix" version="22621.2428.1.10"
//	          processorArchitecture="amd64" language="neutral"
//	          publicKeyToken="31bf3856ad364e35" buildType="release"/>
//	    </supersededPackages>
//	    <update name="Microsoft-Windows-Kernel">
//	      <component>
//	        <assemblyIdentity name="Microsoft-Windows-Kernel" version="10.0.22621.2715"
//	            processorArchitecture="amd64" language="neutral"
//	            publicKeyToken="31bf3856ad364e35" buildType="release" versionScope="nonSxS"/>
//	      </component>
//	    </update>
//	  </package>
//	</assembly>
//
// How each Manifest field is stored:
//
//	Identity          assembly/assemblyIdentity (name, publicKeyToken, processorArchitecture,
//	                  language, version); arch is amd64, x86, arm64 or neutral;
//	                  version has four numeric parts
//	KB                package/@identifier (required)
//	Title             assembly/@displayName; "default" or absent: @description is used
//	                  (so an empty Title is written as "default" and reads back "Fix for <KB>")
//	ReleaseType       package/@releaseType
//	Released          assembly/@creationTimeStamp, RFC 3339 (absent: zero time)
//	Products          package/customInformation/product/@name, in order
//	ApplicableBuilds  the third version part of each package/parent/assemblyIdentity
//	                  whose <parent buildCompare> is EQ or absent;
//	                  no <parent>: the package applies to every build
//	MinBuild          the lowest such build of a <parent buildCompare="GE">: the
//	                  package applies to it and every later build too
//	Supersedes        package/supersededPackages/assemblyIdentity, as Identity.String()
//	                  (Name~Token~Arch~Lang~Version, neutral language written empty)
//	Components        package/update/component/assemblyIdentity, in order; their Files
//	                  come from the component manifests, not from update.mum
//	Classification    not stored: derived by Manifest.Classify, rules in order:
//	                    releaseType contains "Servicing Stack", or
//	                    name starts Package_for_ServicingStack               SERVICING_STACK
//	                    title or a product contains ".NET", or
//	                    name starts Package_for_DotNetRollup                 DOTNET
//	                    name starts Package_for_RollupFix, or
//	                    releaseType contains "Cumulative"                    CUMULATIVE_UPDATE
//	                    releaseType contains "Security"                      SECURITY_UPDATE
//	                    any other releaseType                                UPDATE
//	                    none                                                 UNSPECIFIED
//
// # Component manifest (<SxSName>.manifest)
//
//	<?xml version="1.0" encoding="utf-8" standalone="yes"?>
//	<assembly xmlns="urn:schemas-microsoft-com:asm.v3" manifestVersion="1.0">
//	  <assemblyIdentity name="Microsoft-Windows-Kernel" version="10.0.22621.2715"
//	      processorArchitecture="amd64" language="neutral"
//	      publicKeyToken="31bf3856ad364e35" buildType="release" versionScope="nonSxS"/>
//	  <file name="ntoskrnl.exe" sourceName="ntoskrnl.exe"/>
//	  <file name="drivers\acpi.sys" sourceName="drivers\acpi.sys"/>
//	</assembly>
//
// Its identity must match the component listed in update.mum; each <file>
// names a payload member <SxSName>/<name> relative to the component folder.
// Component architectures may also be wow64 or msil.
//
// # Windows' own packages
//
// Windows' update cabinets (as Microsoft ships them, e.g.
// Windows10.0-KB5005565-x64.cab) have the same update.mum, but install
// more than osvc's engine does: their <update> elements name packages of
// their own (<package integrate="hidden"><assemblyIdentity
// name="Package_1_for_KB5005565" .../>, each a .mum beside update.mum),
// drivers or applicability rules as well as components; they are signed
// with catalogs (update.cat); their component manifests are named by
// Windows' own WinSxS hash and, in current updates, compressed with DCM
// (they start with "DCM\x01", a delta against a manifest inside Windows'
// servicing stack); their payload may be in a PSF file beside the cabinet
// (customInformation PackageFormat="PSFX", package/@psfName, a
// <name>.psf.cix.xml member); they may hold cabinets. Open reads such a
// package as it reads any: every member name, every member's data,
// update.mum and what it names, by the same rules. It does not look for or
// parse the component manifests, and the package comes back with
// Package.NotInstallable saying, for each of these marks it bears, why the
// wimlib engine cannot install it faithfully; Stage refuses it with
// ErrUnsupported. The catalog records it all the same, for the dism
// engine. updatepkgtest's windows.go builds such files and says where
// each part of their structure comes from.
//
// # MSU
//
// An MSU is a cabinet whose members are package cabinets (*.cab), plus
// optionally cabinets that hold no package (WSUSSCAN.cab, Windows Update's
// scan metadata; DesktopDeployment.cab, DesktopDeployment_x86.cab and
// *.AggregatedMetadata*.cab in Windows 11's), a properties file
// (<name>-pkgProperties.txt), an unattend file (*.xml) and other files,
// which are read but not staged. Its packages are applied in the MSU's
// stored order; BuildMSU stores them sorted by name. Package.Manifests
// lists them all; Package.Manifest is the MSU's own package: the cabinet
// its properties file is named for (<name>.cab), else the cabinet its
// unattend file's <source location> names, else the last package that is
// not a servicing stack (a combined MSU installs its servicing stack
// first), else the first. Every member name follows the rules above, every
// inner cabinet is read as a package CAB is and must be one (a .cab that
// is not a cabinet, or holds no update.mum, is refused), and the packages
// must agree: one architecture, each package identity once.
//
// The properties file's lines are Key="value"; Package.Properties holds
// them. Package.KB, Title and Products complete the manifest with them:
// the KB is update.mum's identifier when it is one (KB<number>), else
// "KB Article Number", else the file name's KB<number>; the title is
// update.mum's displayName unless Windows left it "default" (then the
// description, "Fix for KB<number>", is read), in which case it is
// "<Package Type> for <Product Name> (<KB>)", else the description.
//
// An MSU whose payload is a <name>.psf beside its cabinet is read, and
// NotInstallable says so. An MSU carrying its update inside a WIM
// (<name>.wim), or that is itself a WIM archive (Windows 11, version 24H2
// and later), is ErrUnsupported: osvc does not read WIM resources, so the
// catalog records it from its name and the dism engine applies it.
//
// # Staging
//
// Stage writes only what Open validated, under the names above:
// update.mum, <SxSName>.manifest and <SxSName>/<file>, into the staging
// folder itself for a CAB, and for an MSU its inner cabinets into <dir>/msu
// and their packages into <dir>/package-01, -02, ... It writes through an
// os.Root, so nothing is ever written outside the staging folder, and
// checks every file it writes is byte for byte what Open read (a file
// changed since is refused).
//
// Cabinets may be compressed with MSZIP or LZX, as Microsoft's are. Files
// that are not cabinets, cabinets holding neither update.mum nor package
// cabinets, MSUs that are or carry WIMs, and cabinets compressed with
// Quantum return errors wrapping ErrUnsupported: they are not packages osvc
// reads, which the catalog records from their names and the wimlib engine
// reports UNSUPPORTED.
package updatepkg
