#!/usr/bin/env bash
# Headless Chromium for tests/test_report_browser.py (Debian package `chromium`, as root).
# Safe to run repeatedly: does nothing when `chromium` is already on PATH. Never fails the caller:
# when it cannot install, it says so and exits 0 (the browser test is then skipped with a reason).
set -uo pipefail

say() { echo "[browser] $*"; }

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [[ $EUID -ne 0 ]]; then
    say "chromium not found and not root: cannot install it; the browser test will be skipped"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "chromium not found and no apt-get here: install a Chromium yourself; the browser test will be skipped"
    exit 0
fi

say "installing chromium (Debian package)"
export DEBIAN_FRONTEND=noninteractive
opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
try_install() { apt-get install "${opts[@]}" chromium >/dev/null 2>&1; }
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null || ! try_install; then
    apt-get update -q >/dev/null 2>&1 && try_install
fi
if command -v chromium >/dev/null 2>&1; then
    say "chromium installed: $(chromium --version 2>/dev/null)"
else
    say "could not install chromium (apt-get failed); the browser test will be skipped"
fi
exit 0
