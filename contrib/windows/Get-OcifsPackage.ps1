<#
.SYNOPSIS
Puts a package out of an OCI artifact into a directory with ocifs: the
drop-in for `oras pull` followed by unzip in a Windows node setup script.

.DESCRIPTION
Where the Projected File System is enabled (the Client-ProjFS optional
feature), the package directory is mounted at -Destination with
`ocifs mount --daemon`: its files are fetched when first read, and the mount
lasts while that ocifs process runs. Elsewhere the script fills the ocifs
cache with `ocifs prefetch` (retried like `oras pull` was, -Retries times),
then lists the package from the cache with `ocifs ls --offline` and writes
each file into -Destination with `ocifs cat --offline`: after the prefetch
nothing more is asked of the registry, so every file comes from the one
manifest the prefetch resolved.

A zip, tar or tar.gz layer is shown as a directory named by its title
without the extension (--expand), so -Path 'cni-plugins-windows-amd64-v1.6.2'
takes the contents of the layer 'cni-plugins-windows-amd64-v1.6.2.zip'.

ProjFS is enabled once, in an elevated PowerShell (a reboot may be needed):
    Enable-WindowsOptionalFeature -Online -FeatureName Client-ProjFS

The cache is ocifs's default, %LOCALAPPDATA%\ocifs, unless OCIFS_CACHE is set.

.EXAMPLE
.\Get-OcifsPackage.ps1 -Reference mirror.local:5000/aks/packages/cni:v1.6.2 `
    -Path cni-plugins-windows-amd64-v1.6.2 -Destination C:\k\cni

.EXAMPLE
# Never mount; copy the files out even where ProjFS is enabled.
.\Get-OcifsPackage.ps1 -Reference mirror.local:5000/aks/packages/cni:v1.6.2 `
    -Path cni-plugins-windows-amd64-v1.6.2 -Destination C:\k\cni -Mode Copy
#>
[CmdletBinding()]
param(
    # The artifact on the registry mirror: HOST[:PORT]/REPO:TAG or @sha256:...
    [Parameter(Mandatory = $true)] [string] $Reference,
    # The directory of the artifact to take ('.' for all of it); a package
    # (zip, tar, tar.gz layer) is the directory named by its title without
    # the extension.
    [ValidateNotNullOrEmpty()] [string] $Path = '.',
    # Where the files go (a new or empty directory for a mount).
    [Parameter(Mandatory = $true)] [string] $Destination,
    # How many times the fetch is tried before the script gives up.
    [ValidateRange(1, 100)] [int] $Retries = 5,
    # The wait between two tries; it doubles after each failed one.
    [ValidateRange(0, 3600)] [int] $RetryDelaySeconds = 5,
    # ocifs's --timeout: one registry operation, its own retries included.
    [ValidateRange(1, 86400)] [int] $TimeoutSeconds = 300,
    # Auto: mount where ProjFS is enabled, else copy.
    [ValidateSet('Auto', 'Mount', 'Copy')] [string] $Mode = 'Auto',
    # Talk HTTP to the mirror, not HTTPS.
    [switch] $PlainHttp,
    # The ocifs executable.
    [string] $Ocifs = 'ocifs.exe'
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'

# The ocifs command lines of each step, one per line, split at single
# spaces. {REF}, {PATH}, {FILE}, {DEST} and {TIMEOUT} are filled in per
# call (a value may contain spaces: it stays one argument); {TRANSPORT} is
# --plain-http with -PlainHttp and nothing otherwise.
# tests/tests/e2e/windows.rs reads these very lines and runs them with
# ocifs.exe under Wine against a registry, so they cannot drift from the CLI.
$OcifsCommandLines = [ordered]@{
    mount    = 'mount --daemon --expand --timeout {TIMEOUT} {TRANSPORT} --root {PATH} {REF} {DEST}'
    prefetch = 'prefetch --expand --timeout {TIMEOUT} {TRANSPORT} --root {PATH} {REF}'
    list     = 'ls --offline --expand --recursive --json --root {PATH} {REF}'
    cat      = 'cat --offline --expand --root {PATH} {REF} {FILE}'
}

# ocifs exit codes a later try cannot change: usage (2), not found (3),
# authentication (4), invalid content (7). Network trouble (5), a blob that
# failed its check (6, dropped from the cache and fetched again) and other
# errors (1) are tried again.
$FinalExitCodes = @(2, 3, 4, 7)

function Get-OcifsArguments([string] $Step, [hashtable] $Values) {
    $arguments = @()
    foreach ($token in $OcifsCommandLines[$Step].Split(' ')) {
        if ($token -match '^\{([A-Z]+)\}$') {
            $value = $Values[$Matches[1]]
            if ($null -eq $value) { throw "no value for $token in the $Step command line" }
            if ($value -ne '') { $arguments += $value }
        } else {
            $arguments += $token
        }
    }
    return $arguments
}

# One argument of a Windows command line, quoted as CommandLineToArgvW reads it.
function ConvertTo-CommandLineArgument([string] $Argument) {
    if ($Argument -ne '' -and $Argument -notmatch '[\s"]') { return $Argument }
    $escaped = [regex]::Replace($Argument, '(\\*)"', '$1$1\"')
    $escaped = [regex]::Replace($escaped, '(\\+)$', '$1$1')
    return '"' + $escaped + '"'
}

# Runs ocifs with stdout copied to a file (bytes as they are: no PowerShell
# pipeline in between) or left on this console; stderr stays on the console.
# Waits for ocifs alone, not for a `mount --daemon` child it leaves running
# (Start-Process -Wait would wait for that too).
function Invoke-Ocifs([string[]] $Arguments, [string] $StdoutFile) {
    $info = New-Object System.Diagnostics.ProcessStartInfo
    $info.FileName = $Ocifs
    $info.Arguments = ($Arguments | ForEach-Object { ConvertTo-CommandLineArgument $_ }) -join ' '
    $info.UseShellExecute = $false
    $info.RedirectStandardOutput = [bool] $StdoutFile
    Write-Verbose "$Ocifs $($info.Arguments)"
    $process = [System.Diagnostics.Process]::Start($info)
    if ($StdoutFile) {
        $out = [System.IO.File]::Create($StdoutFile)
        try { $process.StandardOutput.BaseStream.CopyTo($out) } finally { $out.Dispose() }
    }
    $process.WaitForExit()
    return $process.ExitCode
}

function Invoke-OcifsWithRetries([string] $Step, [hashtable] $Values) {
    $arguments = Get-OcifsArguments $Step $Values
    $delay = $RetryDelaySeconds
    for ($try = 1; ; $try++) {
        $code = Invoke-Ocifs $arguments
        if ($code -eq 0) { return }
        if ($FinalExitCodes -contains $code -or $try -ge $Retries) {
            throw "ocifs $Step of $Reference failed with exit code $code (try $try of $Retries)"
        }
        Write-Warning "ocifs $Step of $Reference failed with exit code $code (try $try of $Retries); trying again in $delay s"
        Start-Sleep -Seconds $delay
        $delay = [Math]::Min($delay * 2, 300)
    }
}

function Test-ProjFS {
    try {
        $feature = Get-WindowsOptionalFeature -Online -FeatureName Client-ProjFS -ErrorAction Stop
        return $feature.State -eq 'Enabled'
    } catch {
        # Not elevated: the library is in System32 only once the feature is on.
        return Test-Path (Join-Path $env:SystemRoot 'System32\ProjectedFSLib.dll')
    }
}

$values = @{
    REF       = $Reference
    PATH      = $Path
    DEST      = $Destination
    TIMEOUT   = [string] $TimeoutSeconds
    TRANSPORT = $(if ($PlainHttp) { '--plain-http' } else { '' })
}

if ($Mode -eq 'Auto') {
    $Mode = $(if (Test-ProjFS) { 'Mount' } else { 'Copy' })
}

if ($Mode -eq 'Mount') {
    New-Item -ItemType Directory -Force -Path $Destination | Out-Null
    Invoke-OcifsWithRetries 'mount' $values
    Write-Host "mounted $Path of $Reference at $Destination (ProjFS)"
    return
}

Invoke-OcifsWithRetries 'prefetch' $values

$listing = Join-Path ([IO.Path]::GetTempPath()) "ocifs-ls-$PID.json"
try {
    $code = Invoke-Ocifs (Get-OcifsArguments 'list' $values) $listing
    if ($code -ne 0) { throw "ocifs ls of $Reference failed with exit code $code" }
    $entries = Get-Content -Raw -Path $listing | ConvertFrom-Json
} finally {
    Remove-Item -Force -ErrorAction SilentlyContinue $listing
}

# A symlink's target, as a path of the listing ('' if it leaves it).
function Resolve-LinkTarget([string] $Link, [string] $Target) {
    if ($Target.StartsWith('/')) { return '' }
    $parts = [System.Collections.Generic.List[string]]::new()
    $parent = @()
    if ($Link.Contains('/')) { $parent = $Link.Substring(0, $Link.LastIndexOf('/')).Split('/') }
    foreach ($part in @($parent) + $Target.Split('/')) {
        if ($part -eq '' -or $part -eq '.') { continue }
        if ($part -eq '..') {
            if ($parts.Count -eq 0) { return '' }
            $parts.RemoveAt($parts.Count - 1)
        } else {
            $parts.Add($part)
        }
    }
    return $parts -join '/'
}

New-Item -ItemType Directory -Force -Path $Destination | Out-Null
$written = @{}
$links = @()
foreach ($entry in $entries) {
    $target = Join-Path $Destination ($entry.path -replace '/', '\')
    switch ($entry.type) {
        'dir' { New-Item -ItemType Directory -Force -Path $target | Out-Null }
        'file' {
            New-Item -ItemType Directory -Force -Path (Split-Path -Parent $target) | Out-Null
            $values.FILE = $entry.path
            $code = Invoke-Ocifs (Get-OcifsArguments 'cat' $values) $target
            if ($code -ne 0) { throw "ocifs cat of $($entry.path) failed with exit code $code" }
            $written[$entry.path] = $target
        }
        'symlink' { $links += $entry }
        default { Write-Warning "skipped $($entry.path): a $($entry.type)" }
    }
}
# A symlink to a file of the package becomes a copy of it (as unzip does
# where links cannot be made); any other is left out, with a warning.
foreach ($link in $links) {
    $to = Resolve-LinkTarget $link.path $link.target
    for ($hops = 0; $hops -lt 40 -and $to -and -not $written.ContainsKey($to); $hops++) {
        $next = @($entries | Where-Object { $_.path -eq $to -and $_.type -eq 'symlink' })
        if ($next.Count -eq 0) { break }
        $to = Resolve-LinkTarget $next[0].path $next[0].target
    }
    if ($to -and $written.ContainsKey($to)) {
        $target = Join-Path $Destination ($link.path -replace '/', '\')
        Copy-Item -Force -LiteralPath $written[$to] -Destination $target
        $written[$link.path] = $target
    } else {
        Write-Warning "skipped $($link.path): a symlink to $($link.target), not a file of $Path"
    }
}
Write-Host "wrote $($written.Count) files of $Path of $Reference to $Destination"
