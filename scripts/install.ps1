# Installs a Shard release archive (.zip) on Windows under a prefix:
#   bin\shard-oracle.exe, bin\shard-scout.exe, share\shard\{web,models}.
# Usage: .\install.ps1 -From URL_OR_FILE [-Prefix DIR]   (default prefix: $env:LOCALAPPDATA\Shard)
param(
  [Parameter(Mandatory = $true)][string]$From,
  [string]$Prefix = (Join-Path $env:LOCALAPPDATA "Shard")
)
$ErrorActionPreference = "Stop"
$work = Join-Path ([System.IO.Path]::GetTempPath()) ("shard-install-" + [guid]::NewGuid())
New-Item -ItemType Directory -Path $work | Out-Null
try {
  $archive = Join-Path $work (Split-Path $From -Leaf)
  if ($From -match '^https?://') { Invoke-WebRequest -Uri $From -OutFile $archive } else { Copy-Item $From $archive }
  try {
    $sumFile = "$archive.sha256"
    if ($From -match '^https?://') { Invoke-WebRequest -Uri "$From.sha256" -OutFile $sumFile } else { Copy-Item "$From.sha256" $sumFile }
    $want = (Get-Content $sumFile).Split(' ')[0]
    $got = (Get-FileHash -Algorithm SHA256 $archive).Hash.ToLower()
    if ($want -ne $got) { throw "$From does not match its sha256" }
  } catch [System.Management.Automation.ItemNotFoundException] { }
  Expand-Archive -Path $archive -DestinationPath $work
  $root = Get-ChildItem $work -Directory -Filter "shard-*" | Select-Object -First 1
  New-Item -ItemType Directory -Force -Path (Join-Path $Prefix "bin"), (Join-Path $Prefix "share\shard") | Out-Null
  Copy-Item (Join-Path $root.FullName "bin\*") (Join-Path $Prefix "bin") -Force
  Copy-Item (Join-Path $root.FullName "share\shard\*") (Join-Path $Prefix "share\shard") -Recurse -Force
  & (Join-Path $Prefix "bin\shard-oracle.exe") --version
  Write-Host "installed into $Prefix"
} finally {
  Remove-Item -Recurse -Force $work
}
