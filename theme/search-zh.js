'use strict';
// 本书的中文搜索（由 book.toml 的 additional-js 加载，在 mdBook 自带的 searcher 之后运行）。
//
// mdBook 的搜索索引按空白切词（mdBook #1081），一整段中文就成了一个“词”，所以中文查询什么也找不到。
// 索引文件 searchindex-*.js 里存着每一节的全文（documentStore），这里换掉 elasticlunr 的
// Index.prototype.search：对每一节的标题、面包屑与正文做子串匹配并打分（BM25 的饱和与长度归一），
// 没有一节含有的较长中文词再退回到相邻两字（二元组）匹配。mdBook 的其余部分（结果列表、
// 键盘操作、页面内高亮 ?highlight=）照旧工作；摘要、高亮词与结果标题由下面的 MutationObserver 改写。
//
// 这个文件既在浏览器里运行，也被 Node 的测试 require（code/tests/browser/search.test.js），
// 所以纯函数放在 searchZh 对象里，浏览器相关的部分只在有 document 时执行。
(function (root) {
    const CJK = /[\u3400-\u9fff\uf900-\ufaff\u{20000}-\u{2ffff}]/u;
    // 一个查询词：连续的中文，或连续的字母数字（含 _ . + -，便于搜 lora_branch、f32、B(Ax) 里的 Ax）
    const TERM = /[\u3400-\u9fff\uf900-\ufaff\u{20000}-\u{2ffff}]+|[A-Za-z0-9_.+\-]+/gu;

    const W_TITLE = 3.0; // 标题含有查询词：相当于正文里出现很多次
    const W_CRUMB = 1.0; // 面包屑（“章 » 节”）含有：同一章的各节都沾光
    const W_HEAD = 2.0; // 一页的第一节（章标题本身）标题含有：章排在它的小节前面
    const BM25_K = 1.2;
    const BM25_B = 0.75;
    // 附录 C（思考题答案）复述各章的内容，排在讲解它的章节后面
    const DEMOTE = [['appendix/solutions.html', 0.5]];

    function splitQuery(query) {
        const terms = [];
        for (const m of query.toLowerCase().matchAll(TERM)) {
            const t = m[0].replace(/^[.+\-]+|[.+\-]+$/g, '');
            if (t && !terms.includes(t)) terms.push(t);
        }
        return terms;
    }

    // 短的英文词（≤ 2 个字符）要求词边界，否则 “x” 会匹配到所有带 x 的词
    function needsBoundary(term) {
        return !CJK.test(term) && term.length <= 2;
    }

    function isWordChar(c) {
        return c !== undefined && /[a-z0-9_]/i.test(c);
    }

    // term 在 text（已小写）里出现的所有位置
    function positions(text, term) {
        const out = [];
        const boundary = needsBoundary(term);
        let i = text.indexOf(term);
        while (i !== -1) {
            if (!boundary || (!isWordChar(text[i - 1]) && !isWordChar(text[i + term.length]))) {
                out.push(i);
            }
            i = text.indexOf(term, i + term.length);
        }
        return out;
    }

    function page(url) {
        return (url || '').split('#')[0];
    }

    // 把索引里的各节准备成小写文本（每个索引只做一次）。docUrls[ref] 是各节的地址，
    // 一页里的第一节（head）就是这一章的标题。
    function prepare(index, docUrls) {
        if (index.__zh) return index.__zh;
        const docs = [];
        let total = 0;
        const store = index.documentStore.docs;
        for (const ref of Object.keys(store)) {
            const d = store[ref];
            const body = (d.body || '').toLowerCase();
            const url = docUrls ? docUrls[ref] : undefined;
            docs.push({
                ref: ref,
                doc: d,
                url: url || '',
                head: url !== undefined && (ref === '0' || page(docUrls[ref - 1]) !== page(url)),
                title: (d.title || '').toLowerCase(),
                crumbs: (d.breadcrumbs || '').toLowerCase(),
                body: body,
            });
            total += body.length;
        }
        index.__zh = { docs: docs, avgLen: Math.max(1, total / Math.max(1, docs.length)) };
        return index.__zh;
    }

    function bigrams(term) {
        const out = [];
        const chars = Array.from(term);
        for (let i = 0; i + 1 < chars.length; i++) {
            const b = chars[i] + chars[i + 1];
            if (!out.includes(b)) out.push(b);
        }
        return out;
    }

    // 查询词 → 匹配单元：原词本身（exact），三个字以上的中文词再加上它的二元组（grams，“合并权重” → 合并、并权、权重）。
    // 中文没有空格，“合并后的权重”“权重的合并”里没有原词，却是同一件事：二元组让这些节也能被找到，只是排在含有原词的节后面。
    function plan(prepared, terms) {
        return terms.map(function (term) {
            const grams = CJK.test(term) && Array.from(term).length >= 3 ? bigrams(term) : [];
            return { term: term, exact: term, grams: grams };
        });
    }

    function idf(n, df) {
        return Math.log(1 + (n - df + 0.5) / (df + 0.5));
    }

    // 一个子串在一节里的得分（未乘 idf）
    function partScore(d, part, avgLen) {
        const tf = positions(d.body, part).length;
        const inTitle = positions(d.title, part).length > 0;
        const inCrumbs = positions(d.crumbs, part).length > 0;
        if (!tf && !inTitle && !inCrumbs) return 0;
        const norm = 1 - BM25_B + BM25_B * d.body.length / avgLen;
        const body = tf ? tf * (BM25_K + 1) / (tf + BM25_K * norm) : 0;
        return body + (inTitle ? W_TITLE + (d.head ? W_HEAD : 0) : 0) + (inCrumbs ? W_CRUMB : 0);
    }

    // 搜索：返回 [{ref, score, doc, terms}]，按得分从高到低。terms 是这一节里实际匹配到的子串（用于高亮）。
    function search(index, query, docUrls) {
        const prepared = prepare(index, docUrls);
        const terms = splitQuery(query);
        if (!terms.length) return [];
        const units = plan(prepared, terms);
        const n = prepared.docs.length;
        // 每个子串的 idf
        const idfs = {};
        for (const u of units) {
            for (const p of [u.exact].concat(u.grams)) {
                if (p in idfs) continue;
                const df = prepared.docs.filter(function (d) {
                    return positions(d.body, p).length || positions(d.title, p).length ||
                        positions(d.crumbs, p).length;
                }).length;
                idfs[p] = idf(n, df);
            }
        }
        const results = [];
        for (let i = 0; i < prepared.docs.length; i++) {
            const d = prepared.docs[i];
            let score = 0;
            let covered = 0;
            const matched = [];
            for (const u of units) {
                const exact = partScore(d, u.exact, prepared.avgLen) * idfs[u.exact];
                let grams = 0;
                let hit = 0;
                const found = [];
                for (const p of u.grams) {
                    const s = partScore(d, p, prepared.avgLen);
                    if (s > 0) {
                        grams += s * idfs[p];
                        hit++;
                        found.push(p);
                    }
                }
                const frac = u.grams.length ? hit / u.grams.length : 0;
                if (exact > 0) {
                    score += exact + grams;
                    covered += 1;
                    matched.push(u.exact);
                } else if (frac >= 0.5) {
                    // 没有原词：至少一半的二元组出现，才算这个词部分匹配
                    score += grams;
                    covered += frac;
                    matched.push.apply(matched, found);
                }
            }
            if (score <= 0) continue;
            // 多词查询：含有全部查询词的节排在只含部分的前面
            score *= Math.pow(covered / units.length, 2);
            for (const rule of DEMOTE) {
                if (d.url.startsWith(rule[0])) score *= rule[1];
            }
            results.push({ ref: d.ref, score: score, doc: d.doc, terms: matched, at: i });
        }
        results.sort(function (a, b) { return b.score - a.score || a.ref - b.ref; });
        // 摘要；章标题那一节通常只有“本章代码：…”一行链接清单（不适合当摘要），用它下一节（同一页）的正文
        const strip = function (body) {
            return (body || '').replace(/^\s*本章代码：[^]*?思考题答案：\s*附录 C\s*/, '');
        };
        for (const r of results) {
            let body = strip(r.doc.body);
            const next = prepared.docs[r.at + 1];
            if (!body.trim() && next && page(next.url) === page(prepared.docs[r.at].url)) {
                body = strip(next.doc.body);
            }
            r.excerpt = excerpt(body, r.terms.length ? r.terms : terms);
            delete r.at;
        }
        return results;
    }

    // 摘要：正文里匹配最密集的约 width 个字符，前后加省略号
    function excerpt(body, terms, width) {
        width = width || 90;
        const lower = body.toLowerCase();
        const hits = [];
        terms.forEach(function (t, k) {
            for (const i of positions(lower, t)) hits.push([i, k]);
        });
        if (!hits.length) return body.length > width ? body.slice(0, width) + '…' : body;
        hits.sort(function (a, b) { return a[0] - b[0]; });
        let best = 0;
        let bestKey = [-1, -1];
        for (let s = 0; s < hits.length; s++) {
            const kinds = new Set();
            let count = 0;
            for (let e = s; e < hits.length && hits[e][0] < hits[s][0] + width - 20; e++) {
                kinds.add(hits[e][1]);
                count++;
            }
            if (kinds.size > bestKey[0] || (kinds.size === bestKey[0] && count > bestKey[1])) {
                bestKey = [kinds.size, count];
                best = hits[s][0];
            }
        }
        const start = Math.max(0, best - 20);
        const end = Math.min(body.length, start + width);
        return (start > 0 ? '…' : '') + body.slice(start, end).replace(/\s+/g, ' ') +
            (end < body.length ? '…' : '');
    }

    const api = {
        splitQuery: splitQuery, plan: plan, search: search, excerpt: excerpt,
        positions: positions, bigrams: bigrams,
    };
    root.searchZh = api;
    if (typeof module !== 'undefined' && module.exports) module.exports = api;

    // ---- 以下只在浏览器里 ----
    if (typeof document === 'undefined' || typeof elasticlunr === 'undefined') return;

    // 最近一次搜索匹配到的词，按结果顺序；改写结果列表时用
    let last = { query: '', results: [] };
    const original = elasticlunr.Index.prototype.search;
    elasticlunr.Index.prototype.search = function (query, config) {
        const urls = (window.search && window.search.doc_urls) || null;
        let results = search(this, query, urls);
        if (!results.length && !CJK.test(query)) {
            // 纯英文查询且子串匹配一无所获：交给 mdBook 原来的检索（它会做词干还原，如 matrices → matrix）
            results = original.call(this, query, config).map(function (r) {
                const doc = r.doc || this.documentStore.getDoc(r.ref);
                return { ref: r.ref, score: r.score, doc: doc, terms: [],
                    excerpt: excerpt(doc.body || '', splitQuery(query)) };
            }, this);
        }
        last = { query: query, results: results };
        // mdBook 用 doc.body 生成摘要（按空格切词，对中文无效）：交给它一个已截好的摘要
        return results.map(function (r) {
            const doc = Object.assign({}, r.doc, { body: r.excerpt });
            return { ref: r.ref, score: r.score, doc: doc };
        });
    };

    function emphasize(span, terms) {
        const text = span.textContent;
        const lower = text.toLowerCase();
        const marks = [];
        for (const t of terms) for (const i of positions(lower, t)) marks.push([i, i + t.length]);
        marks.sort(function (a, b) { return a[0] - b[0] || b[1] - a[1]; });
        while (span.firstChild) span.removeChild(span.firstChild);
        let at = 0;
        for (const m of marks) {
            if (m[0] < at) continue;
            span.appendChild(document.createTextNode(text.slice(at, m[0])));
            const em = document.createElement('em');
            em.textContent = text.slice(m[0], m[1]);
            span.appendChild(em);
            at = m[1];
        }
        span.appendChild(document.createTextNode(text.slice(at)));
    }

    function rewriteResults(list) {
        if (!list) return;
        const items = list.querySelectorAll(':scope > li');
        items.forEach(function (li, i) {
            const r = last.results[i];
            if (!r || li.dataset.zh) return;
            li.dataset.zh = '1';
            const terms = r.terms.length ? r.terms : splitQuery(last.query);
            const teaser = li.querySelector('.teaser');
            if (teaser) emphasize(teaser, terms);
            // 页面内高亮用实际匹配到的词（“合并权重”退回二元组时，页面里高亮“合并”“权重”）
            const a = li.querySelector('a');
            if (a) {
                // 面包屑：去掉各部分共同的“概览 »”，合并重复的“1.1 缩放点积注意力 » 1.1 缩放点积注意力”
                const crumbs = a.textContent.split(' » ').filter(function (c, k, all) {
                    return !(k === 0 && c === '概览' && all.length > 1) && c !== all[k - 1];
                });
                a.textContent = crumbs.join(' » ');
                const href = a.getAttribute('href');
                const q = encodeURIComponent(terms.join(' ')).replace(/'/g, '%27');
                a.setAttribute('href', href.replace(/([?&]highlight=)[^#&]*/, '$1' + q));
            }
        });
    }

    function rewriteHeader(header) {
        if (!header) return;
        const m = /^(\d+) search results? for '(.*)':$/.exec(header.textContent);
        const none = /^No search results for '(.*)'\.$/.exec(header.textContent);
        if (m) header.textContent = '找到 ' + m[1] + ' 个结果（“' + m[2] + '”）：';
        else if (none) header.textContent = '没有找到“' + none[1] + '”。';
    }

    function start() {
        const bar = document.getElementById('mdbook-searchbar');
        const list = document.getElementById('mdbook-searchresults');
        const header = document.getElementById('mdbook-searchresults-header');
        if (!bar || !list || !header) return;
        bar.setAttribute('placeholder', '搜索本书（中文、英文、代码名都可以）');
        new MutationObserver(function () { rewriteResults(list); })
            .observe(list, { childList: true });
        new MutationObserver(function () { rewriteHeader(header); })
            .observe(header, { childList: true, characterData: true, subtree: true });

        // 输入法：拼音组字时（compositionstart…compositionend）不搜索，也不让回车选字跳到第一个结果；
        // 选定汉字后补发一次 keyup，让 mdBook 搜索。监听器在捕获阶段，先于 mdBook 的。
        let composing = false;
        bar.addEventListener('compositionstart', function () { composing = true; });
        bar.addEventListener('compositionend', function () {
            composing = false;
            bar.dispatchEvent(new KeyboardEvent('keyup', { bubbles: true }));
        });
        const guard = function (e) {
            if (e.target === bar && (composing || e.isComposing || e.keyCode === 229)) {
                e.stopImmediatePropagation();
            }
        };
        window.addEventListener('keydown', guard, true);
        window.addEventListener('keyup', guard, true);
    }

    // 这个脚本在 body 末尾，搜索框与结果列表已经在 DOM 里：立即挂上（等 DOMContentLoaded 就晚了，
    // 地址里带 ?search= 时 mdBook 可能已经搜过一次）。
    start();
    const bar = document.getElementById('mdbook-searchbar');
    const list = document.getElementById('mdbook-searchresults');
    if (bar && list && list.children.length && !last.query) {
        // 索引脚本在本脚本之前就加载完，mdBook 已经用原来的检索搜过：让它用新的检索再搜一次。
        // mdBook 不重复搜同一个词，所以先换成一个零宽空格（trim 不去掉它）再换回来。
        const term = bar.value;
        for (const v of ['\u200b', term]) {
            bar.value = v;
            bar.dispatchEvent(new KeyboardEvent('keyup', { bubbles: true }));
        }
    }
    rewriteResults(list);
    rewriteHeader(document.getElementById('mdbook-searchresults-header'));
})(typeof window !== 'undefined' ? window : globalThis);
