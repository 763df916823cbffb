#!/usr/bin/env bash
# The browser end-to-end test needs Debian's chromium and chromium-driver.
# Install them when missing and we are allowed to; otherwise the test skips
# and says why.
command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian chromium + chromium-driver for the browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/tmp/skinlesion-apt.log 2>&1 \
        || echo "could not install chromium (see /tmp/skinlesion-apt.log); the browser test will skip"
else
    echo "chromium is missing and this user cannot apt-get install it; the browser test will skip"
fi
exit 0
