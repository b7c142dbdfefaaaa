// assets/web_page.png: the page after sampling the shipped model and a short
// training run, in headless Chromium driven by Playwright. With the page
// served (web/build.sh; python3 -m http.server -d web 8765):
//   npm install playwright-core@1
//   node web/screenshot.js http://127.0.0.1:8765/index.html BATCH STEPS assets/web_page.png
const { chromium } = require("playwright-core");
(async () => {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--disable-quic", "--no-first-run"],
  });
  const page = await browser.newPage({ viewport: { width: 1100, height: 1000 } });
  page.on("console", (m) => console.log("console:", m.text()));
  await page.goto(process.argv[2]);
  await page.waitForFunction(() => document.getElementById("adapter").textContent.startsWith("adapter"), null, { timeout: 60000 });
  await page.fill("#count", "16");
  await page.click("#sample");
  await page.waitForFunction(() => /step (\d+)\/\1/.test(document.getElementById("sample-status").textContent), null, { timeout: 600000, polling: 1000 });
  console.log("sampled:", await page.textContent("#sample-status"));
  await page.fill("#batch", process.argv[3]);
  await page.fill("#steps", process.argv[4]);
  await page.fill("#grid-every", process.argv[4]);
  await page.click("#train");
  await page.waitForFunction(() => !document.getElementById("train").disabled && document.getElementById("train-grid").width > 0, null, { timeout: 1200000, polling: 2000 });
  console.log("trained:", await page.textContent("#train-status"));
  await page.screenshot({ path: process.argv[5], fullPage: true });
  await browser.close();
})();
