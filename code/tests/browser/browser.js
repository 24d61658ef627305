'use strict';
// 在真实浏览器（无头 Chromium）里检查构建好的书：
//   1. 每一页加载时没有控制台错误、没有加载失败的资源、没有任何网络请求（只许 file: 与 data:）；
//   2. 每个链接指向存在的文件与存在的锚点，每张图片加载成功；
//   3. 公式由 KaTeX 渲染（没有 .katex-error，KaTeX 字体从本地加载）；
//   4. 搜索框里的中英文查询（queries.js）返回期望的章节，摘要有强调，点进结果页有高亮；输入法组字时不搜索；
//   5. 打印视图（print.html）含有全部章节，并能打印成 PDF；
//   6. 存几张截图（浅色、深色主题、搜索结果、打印 PDF）到 target/browser/；
//   7. 汉字真的画成了字形，而不是缺字的方框（系统里没有中文字体时页面照样没有错误）。
// 用法（仓库根目录，先 mdbook build）：node code/tests/browser/browser.js [book 目录]
// 通过 Chrome DevTools 协议与浏览器通信，走 --remote-debugging-pipe（文件描述符 3、4），不需要 npm 包。

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { pathToFileURL, fileURLToPath } = require('node:url');
const { QUERIES } = require('./queries.js');

const root = path.resolve(__dirname, '..', '..', '..');
const bookDir = path.resolve(process.argv[2] || path.join(root, 'book'));
const outDir = path.join(root, 'target', 'browser');
const chromium = process.env.CHROMIUM || 'chromium';

class Cdp {
    constructor(proc) {
        this.writer = proc.stdio[3];
        this.nextId = 1;
        this.pending = new Map();
        this.handlers = [];
        let buf = Buffer.alloc(0);
        proc.stdio[4].on('data', (chunk) => {
            buf = Buffer.concat([buf, chunk]);
            let end;
            while ((end = buf.indexOf(0)) !== -1) {
                const msg = JSON.parse(buf.subarray(0, end).toString('utf8'));
                buf = buf.subarray(end + 1);
                this.dispatch(msg);
            }
        });
    }

    dispatch(msg) {
        if (msg.id !== undefined) {
            const p = this.pending.get(msg.id);
            this.pending.delete(msg.id);
            if (!p) return;
            if (msg.error) p.reject(new Error(`${p.method}: ${msg.error.message}`));
            else p.resolve(msg.result);
        } else {
            for (const h of this.handlers) h(msg);
        }
    }

    send(method, params, sessionId) {
        const id = this.nextId++;
        const msg = { id, method, params: params || {} };
        if (sessionId) msg.sessionId = sessionId;
        return new Promise((resolve, reject) => {
            this.pending.set(id, { resolve, reject, method });
            this.writer.write(JSON.stringify(msg) + '\0');
        });
    }

    on(handler) {
        this.handlers.push(handler);
    }

    waitFor(method, sessionId, timeoutMs) {
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`等待 ${method} 超时`)), timeoutMs);
            const h = (msg) => {
                if (msg.method === method && msg.sessionId === sessionId) {
                    clearTimeout(timer);
                    this.handlers.splice(this.handlers.indexOf(h), 1);
                    resolve(msg.params);
                }
            };
            this.handlers.push(h);
        });
    }
}

class Page {
    constructor(cdp, sessionId) {
        this.cdp = cdp;
        this.session = sessionId;
        this.events = [];
        this.requests = new Map();
        cdp.on((msg) => {
            if (msg.sessionId !== sessionId) return;
            const p = msg.params;
            switch (msg.method) {
                case 'Runtime.exceptionThrown':
                    this.events.push(['错误', p.exceptionDetails.exception
                        ? p.exceptionDetails.exception.description : p.exceptionDetails.text]);
                    break;
                case 'Runtime.consoleAPICalled':
                    if (p.type === 'error' || p.type === 'assert') {
                        this.events.push(['控制台错误', p.args.map((a) => a.value || a.description).join(' ')]);
                    }
                    break;
                case 'Log.entryAdded':
                    if (p.entry.level === 'error') this.events.push(['控制台错误', `${p.entry.text} ${p.entry.url || ''}`]);
                    break;
                case 'Network.requestWillBeSent': {
                    this.requests.set(p.requestId, p.request.url);
                    const proto = p.request.url.split(':')[0];
                    if (!['file', 'data', 'blob', 'about'].includes(proto)) {
                        this.events.push(['网络请求', p.request.url]);
                    }
                    break;
                }
                case 'Network.loadingFailed':
                    if (!p.canceled) {
                        this.events.push(['加载失败', `${this.requests.get(p.requestId)}（${p.errorText}）`]);
                    }
                    break;
                default:
            }
        });
    }

    send(method, params) {
        return this.cdp.send(method, params, this.session);
    }

    async goto(url) {
        this.events = [];
        const loaded = this.cdp.waitFor('Page.loadEventFired', this.session, 30000);
        await this.send('Page.navigate', { url });
        await loaded;
    }

    async eval(expression) {
        const r = await this.send('Runtime.evaluate', {
            expression, awaitPromise: true, returnByValue: true,
        });
        if (r.exceptionDetails) {
            throw new Error(`页面里求值出错：${r.exceptionDetails.exception
                ? r.exceptionDetails.exception.description : r.exceptionDetails.text}`);
        }
        return r.result.value;
    }

    // 等到 expression 为真（每 50 ms 查一次）
    async until(expression, timeoutMs) {
        const start = Date.now();
        while (Date.now() - start < timeoutMs) {
            if (await this.eval(expression)) return true;
            await new Promise((r) => setTimeout(r, 50));
        }
        return false;
    }

    async screenshot(name) {
        const { data } = await this.send('Page.captureScreenshot', { format: 'png' });
        fs.writeFileSync(path.join(outDir, name), Buffer.from(data, 'base64'));
    }
}

function htmlPages(dir, out) {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, entry.name);
        if (entry.isDirectory()) {
            // book/code/ 是源文件的副本；book/theme、fonts 等只有静态资源
            if (p !== path.join(bookDir, 'code')) htmlPages(p, out);
        } else if (entry.name.endsWith('.html') && entry.name !== '404.html') {
            out.push(p);
        }
    }
    return out;
}

// 每一页加载后在页面里收集的信息
const COLLECT = `(async () => {
    await document.fonts.ready;
    const main = document.querySelector('main') || document.body;
    const katex = main.querySelectorAll('.katex');
    const fonts = [...document.fonts].filter((f) => f.family.replace(/"/g, '').startsWith('KaTeX_'));
    // 公式之外的正文（去掉代码与 KaTeX）里残留的 $$ 或 \\( 说明有公式没被渲染
    const clone = main.cloneNode(true);
    clone.querySelectorAll('pre, code, .katex').forEach((e) => e.remove());
    return {
        title: document.title,
        links: [...document.querySelectorAll('a[href]')].map((a) => a.href),
        ids: [...document.querySelectorAll('[id]')].map((e) => e.id),
        badImages: [...document.images].filter((i) => !i.complete || i.naturalWidth === 0)
            .map((i) => i.getAttribute('src')),
        images: document.images.length,
        katex: katex.length,
        katexErrors: main.querySelectorAll('.katex-error').length,
        katexZero: [...katex].filter((k) => k.getBoundingClientRect().width === 0 &&
            k.closest('details') === null).length,
        katexFontsLoaded: fonts.filter((f) => f.status === 'loaded').map((f) => f.family),
        rawMath: /\\$\\$|\\\\\\(|\\\\\\[/.test(clone.innerText),
        h1: main.querySelectorAll('h1').length,
    };
})()`;

// 在正文（main）与代码块（pre code）的字体下画汉字，返回每字的宽度（em）、画出几种字形、几个与缺字框相同
const CJK_GLYPHS = `(async () => {
    await document.fonts.ready;
    const chars = ['中', '文', '字', '搜'];
    const code = document.createElement('code');
    const pre = document.createElement('pre');
    pre.appendChild(code);
    (document.querySelector('main') || document.body).appendChild(pre);
    const out = [];
    for (const [where, el] of [['正文', document.querySelector('main') || document.body], ['代码', code]]) {
        const font = getComputedStyle(el).fontFamily;
        const draw = (t) => {
            const c = document.createElement('canvas');
            c.width = 64; c.height = 64;
            const g = c.getContext('2d');
            g.font = '48px ' + font;
            g.fillText(t, 4, 52);
            return g.getImageData(0, 0, 64, 64).data.join(',');
        };
        const g = document.createElement('canvas').getContext('2d');
        g.font = '48px ' + font;
        const width = g.measureText(chars.join('')).width / chars.length / 48;
        const tofu = draw('\\u{10FFFD}');
        const shapes = chars.map(draw);
        out.push({ where, font, width, chars: chars.length, distinct: new Set(shapes).size,
            tofu: shapes.filter((x) => x === tofu).length });
    }
    pre.remove();
    return out;
})()`;

async function main() {
    if (!fs.existsSync(path.join(bookDir, 'index.html'))) {
        throw new Error(`${bookDir} 里没有 index.html：先运行 mdbook build`);
    }
    fs.mkdirSync(outDir, { recursive: true });
    const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'llm-book-chromium-'));
    const proc = spawn(chromium, [
        '--headless=new', '--remote-debugging-pipe', '--no-sandbox', '--disable-gpu',
        '--no-first-run', '--no-default-browser-check', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--disable-extensions',
        // 任何主机名都解析失败：书若想从网络加载东西，会在下面记成“网络请求”或“加载失败”
        '--host-resolver-rules=MAP * ~NOTFOUND',
        '--allow-file-access-from-files', '--window-size=1280,900',
        `--user-data-dir=${profile}`, 'about:blank',
    ], { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] });
    let stderr = '';
    proc.stderr.on('data', (d) => { stderr += d; });
    const started = new Promise((resolve, reject) => {
        proc.on('error', reject);
        proc.on('exit', (code) => reject(new Error(`Chromium 退出（${code}）：${stderr.slice(-2000)}`)));
        setTimeout(resolve, 100);
    });
    await started;
    const cdp = new Cdp(proc);
    const problems = [];
    const report = [];
    try {
        const { targetId } = await cdp.send('Target.createTarget', { url: 'about:blank' });
        const { sessionId } = await cdp.send('Target.attachToTarget', { targetId, flatten: true });
        const page = new Page(cdp, sessionId);
        for (const domain of ['Page', 'Runtime', 'Log', 'Network']) await page.send(`${domain}.enable`);
        await page.send('Emulation.setDeviceMetricsOverride', {
            width: 1280, height: 900, deviceScaleFactor: 1, mobile: false,
        });

        // ---- 1–3：每一页 ----
        const pages = htmlPages(bookDir, []).sort();
        const info = new Map();
        let totalKatex = 0;
        for (const file of pages) {
            const rel = path.relative(bookDir, file);
            await page.goto(pathToFileURL(file).href);
            const r = await page.eval(COLLECT);
            // 晚到的事件（图片、字体的加载失败）要算在这一页上，而不是下一页
            await new Promise((resolve) => setTimeout(resolve, 100));
            info.set(file, r);
            totalKatex += r.katex;
            for (const [kind, what] of page.events) problems.push(`${rel}：${kind} ${what}`);
            for (const src of r.badImages) problems.push(`${rel}：图片没有加载 ${src}`);
            if (r.katexErrors) problems.push(`${rel}：${r.katexErrors} 个公式渲染出错（.katex-error）`);
            if (r.katexZero) problems.push(`${rel}：${r.katexZero} 个公式宽度为 0`);
            if (r.rawMath) problems.push(`${rel}：正文里有没渲染的公式（$$ 或 \\( ）`);
            if (r.katex && !r.katexFontsLoaded.includes('KaTeX_Main')) {
                problems.push(`${rel}：有公式，但 KaTeX_Main 字体没有加载（${r.katexFontsLoaded.join(', ')}）`);
            }
        }
        report.push(`检查了 ${pages.length} 页，${totalKatex} 个公式`);

        // 中文字形：系统里没有中文字体时，汉字会画成缺字的方框（“豆腐块”），页面照样没有错误。
        // 在正文与代码的字体下画几个汉字：中文字形是全角的（每字约 1 em 宽），彼此不同，
        // 也不同于一个没有任何字体有字形的码位（U+10FFFD，必然画成缺字框）。
        await page.goto(pathToFileURL(path.join(bookDir, 'index.html')).href);
        const glyphs = await page.eval(CJK_GLYPHS);
        for (const g of glyphs) {
            const ok = g.width > 0.9 && g.width < 1.1 && g.distinct === g.chars && g.tofu === 0;
            if (!ok) {
                problems.push(`${g.where}的字体（${g.font}）画不出汉字：每字宽 ${g.width.toFixed(2)} em（应约 1），` +
                    `${g.chars} 个字画出 ${g.distinct} 种字形，${g.tofu} 个与缺字框相同——装一个中文字体（Debian：apt install fonts-noto-cjk）`);
            }
            report.push(`${g.where}的汉字：每字 ${g.width.toFixed(2)} em，${g.distinct}/${g.chars} 种字形`);
        }
        if (totalKatex < 100) problems.push(`全书只有 ${totalKatex} 个渲染出的公式：KaTeX 预处理器可能没有运行`);

        // 链接：本地文件要存在；#锚点要在目标页里
        let links = 0;
        for (const [file, r] of info) {
            const rel = path.relative(bookDir, file);
            for (const href of r.links) {
                const url = new URL(href);
                if (url.protocol !== 'file:') continue;
                links++;
                const target = fileURLToPath(url);
                if (!fs.existsSync(target)) {
                    problems.push(`${rel}：链接指向不存在的文件 ${path.relative(bookDir, target)}`);
                    continue;
                }
                const hash = decodeURIComponent(url.hash.replace(/^#/, ''));
                if (hash && target.endsWith('.html')) {
                    const t = info.get(target);
                    if (t && !t.ids.includes(hash)) {
                        problems.push(`${rel}：链接 ${path.relative(bookDir, target)}#${hash} 的锚点不存在`);
                    }
                }
            }
        }
        report.push(`检查了 ${links} 个本地链接`);

        // 静态检查：构建出的 HTML、CSS、JS 里没有指向网络的资源（浏览器只记录真的发出的请求，
        // 这里连“某种情况下才加载”的也拦住，如 @font-face 的备用地址、打印时才用的样式）
        const remote = /<(?:script|img|iframe|source)\b[^>]*\bsrc=["']?(?:https?:)?\/\/|<link\b[^>]*\bhref=["']?(?:https?:)?\/\/|url\(\s*["']?(?:https?:)?\/\/|@import\s+["'](?:https?:)?\/\//i;
        const assets = [];
        (function walk(dir) {
            for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
                const p = path.join(dir, e.name);
                if (e.isDirectory()) { if (p !== path.join(bookDir, 'code')) walk(p); }
                else if (/\.(html|css|js)$/.test(e.name)) assets.push(p);
            }
        })(bookDir);
        for (const file of assets) {
            const m = remote.exec(fs.readFileSync(file, 'utf8'));
            if (m) problems.push(`${path.relative(bookDir, file)}：引用了网络上的资源 ${m[0]}`);
        }
        report.push(`静态检查了 ${assets.length} 个 HTML/CSS/JS 文件里的网络资源`);

        // 插图：SVG 有整幅的白色底（深色主题下也清楚），文字用带中文字体的字体栈
        const figures = fs.readdirSync(path.join(bookDir, 'figures')).filter((n) => n.endsWith('.svg'));
        for (const name of figures) {
            const svg = fs.readFileSync(path.join(bookDir, 'figures', name), 'utf8');
            const size = /<svg width="(\d+)" height="(\d+)"/.exec(svg);
            const bg = size && svg.includes(`<rect x="0" y="0" width="${size[1]}" height="${size[2]}" opacity="1" fill="#FFFFFF"`);
            if (!bg) problems.push(`figures/${name}：没有整幅的白色底`);
            const fonts = [...svg.matchAll(/font-family="([^"]*)"/g)].map((m) => m[1]);
            if (!fonts.length || fonts.some((f) => !f.includes('Noto Sans CJK SC') || !f.endsWith('sans-serif'))) {
                problems.push(`figures/${name}：文字的字体栈不含中文字体（${[...new Set(fonts)].join(' / ')}）`);
            }
        }
        report.push(`检查了 ${figures.length} 张 SVG 插图的底色与字体`);

        // ---- 4：搜索 ----
        const index = pathToFileURL(path.join(bookDir, 'index.html')).href;
        for (const q of QUERIES) {
            await page.goto(`${index}?search=${encodeURIComponent(q.query)}`);
            const ok = await page.until(
                `document.querySelectorAll('#mdbook-searchresults > li[data-zh]').length > 0`, 5000);
            const r = await page.eval(`({
                header: document.getElementById('mdbook-searchresults-header').textContent,
                hrefs: [...document.querySelectorAll('#mdbook-searchresults > li > a')]
                    .map((a) => a.getAttribute('href')),
                titles: [...document.querySelectorAll('#mdbook-searchresults > li > a')]
                    .map((a) => a.textContent),
                em: [...document.querySelectorAll('#mdbook-searchresults .teaser em')]
                    .map((e) => e.textContent),
            })`);
            if (!ok) {
                problems.push(`搜索“${q.query}”：5 秒内没有结果（${r.header}）`);
                continue;
            }
            const pagesFound = r.hrefs.map((h) => h.split(/[?#]/)[0]);
            for (const want of q.expect) {
                if (!pagesFound.slice(0, q.within).includes(want)) {
                    problems.push(`搜索“${q.query}”：前 ${q.within} 个结果里没有 ${want}（${pagesFound.slice(0, 5).join('、')}）`);
                }
            }
            if (!r.header.startsWith('找到')) problems.push(`搜索“${q.query}”：结果标题 ${r.header}`);
            if (!r.em.length) problems.push(`搜索“${q.query}”：摘要里没有强调的匹配词`);
            if (q.query === '注意力') await page.screenshot('search-注意力.png');
            // 点进第一个结果：页面里有高亮
            await page.goto(new URL(r.hrefs[0], index).href);
            const marks = await page.until(`document.querySelectorAll('main mark').length > 0`, 3000);
            if (!marks) problems.push(`搜索“${q.query}”：打开第一个结果 ${r.hrefs[0]} 后页面里没有高亮`);
            report.push(`搜索“${q.query}”→ ${r.titles.slice(0, 3).join(' | ')}`);
        }

        // 输入法：组字过程中（拼音）不搜索，选定后才搜索
        await page.goto(`${index}?search=${encodeURIComponent('位置编码')}`);
        await page.until(`document.querySelectorAll('#mdbook-searchresults > li').length > 0`, 5000);
        const ime = await page.eval(`(async () => {
            const bar = document.getElementById('mdbook-searchbar');
            const header = document.getElementById('mdbook-searchresults-header');
            const wait = () => new Promise((r) => setTimeout(r, 100));
            bar.dispatchEvent(new CompositionEvent('compositionstart', { bubbles: true }));
            bar.value = 'zhu yi li';
            bar.dispatchEvent(new KeyboardEvent('keyup', { bubbles: true, key: 'i' }));
            await wait();
            const during = header.textContent;
            bar.value = '注意力';
            bar.dispatchEvent(new CompositionEvent('compositionend', { bubbles: true, data: '注意力' }));
            await wait();
            return { during, after: header.textContent };
        })()`);
        if (!ime.during.includes('位置编码')) problems.push(`输入法组字时搜索了：${ime.during}`);
        if (!ime.after.includes('注意力')) problems.push(`输入法选定后没有搜索：${ime.after}`);
        report.push(`输入法：组字时结果仍是“${ime.during}”，选定后是“${ime.after}”`);

        // ---- 5：打印视图 ----
        const printFile = path.join(bookDir, 'print.html');
        const chapters = [...fs.readFileSync(path.join(root, 'src', 'SUMMARY.md'), 'utf8')
            .matchAll(/\]\(([^)]+\.md)\)/g)].length;
        const printInfo = info.get(printFile);
        if (!printInfo) problems.push('没有 print.html：book.toml 里打开 [output.html.print]');
        else if (printInfo.h1 < chapters) problems.push(`print.html 只有 ${printInfo.h1} 个一级标题，SUMMARY.md 有 ${chapters} 章`);
        if (printInfo) {
            await page.goto(pathToFileURL(printFile).href);
            const { data } = await page.send('Page.printToPDF', { printBackground: true });
            const pdf = Buffer.from(data, 'base64');
            fs.writeFileSync(path.join(outDir, 'book.pdf'), pdf);
            const pagesPdf = (pdf.toString('latin1').match(/\/Type\s*\/Page[^s]/g) || []).length;
            if (pagesPdf < chapters) problems.push(`打印出的 PDF 只有 ${pagesPdf} 页`);
            report.push(`打印视图：${printInfo.h1} 个一级标题，PDF ${pagesPdf} 页，${(pdf.length / 1048576).toFixed(1)} MiB`);
        }

        // ---- 6：截图（浅色、深色） ----
        const shots = [['index.html', 'index'], ['part1/attention.html', 'attention'],
            ['part2/experiments.html', 'figures']];
        for (const theme of ['light', 'navy']) {
            for (const [rel, name] of shots) {
                await page.goto(pathToFileURL(path.join(bookDir, rel)).href);
                await page.eval(`localStorage.setItem('mdbook-theme', '${theme}')`);
                await page.goto(pathToFileURL(path.join(bookDir, rel)).href);
                await page.eval(`(async () => { await document.fonts.ready;
                    const img = document.querySelector('main img');
                    if (img) img.scrollIntoView(); })()`);
                await page.screenshot(`${name}-${theme}.png`);
            }
        }
        await page.eval(`localStorage.removeItem('mdbook-theme')`);
        report.push(`截图与 PDF 在 ${path.relative(root, outDir)}/`);
    } finally {
        const exited = new Promise((resolve) => {
            proc.removeAllListeners('exit');
            proc.on('exit', resolve);
            setTimeout(resolve, 5000);
        });
        proc.kill();
        await exited;
        // Chromium 的子进程可能还在往配置目录里写：删不掉时只提示，不掩盖上面真正的错误
        try {
            fs.rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 300 });
        } catch (e) {
            console.error(`（没能删掉临时的浏览器配置目录 ${profile}：${e.message}）`);
        }
    }
    for (const line of report) console.log(line);
    if (problems.length) {
        console.error(`\n浏览器测试发现 ${problems.length} 个问题：\n  ${problems.join('\n  ')}`);
        process.exit(1);
    }
    console.log('浏览器测试通过');
}

main().catch((e) => {
    console.error(`浏览器测试出错：${e.message}`);
    process.exit(1);
});
