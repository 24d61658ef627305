'use strict';
// theme/search-zh.js 的排序测试：在构建好的书（book/searchindex-*.js）上跑一组查询，检查排在最前的章节。
// 用法（仓库根目录，先 mdbook build）：node --test code/tests/browser/search.test.js
// 浏览器里的完整流程（输入框、结果列表、页面内高亮）由 browser.js 测。

const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const path = require('node:path');
const { QUERIES } = require('./queries.js');

const root = path.resolve(__dirname, '..', '..', '..');
const bookDir = process.env.LLM_BOOK_HTML || path.join(root, 'book');
const zh = require(path.join(root, 'theme', 'search-zh.js'));

function loadIndex() {
    const name = fs.readdirSync(bookDir).find((n) => /^searchindex-[0-9a-f]+\.js$/.test(n) ||
        n === 'searchindex.js');
    assert.ok(name, `${bookDir} 里没有 searchindex-*.js：先运行 mdbook build`);
    const window = { search: {} };
    new Function('window', fs.readFileSync(path.join(bookDir, name), 'utf8'))(window);
    return window.search;
}

const config = loadIndex();
const search = (q) => zh.search(config.index, q, config.doc_urls)
    .map((r) => Object.assign(r, { url: config.doc_urls[r.ref] }));

for (const q of QUERIES) {
    test(`查询“${q.query}”`, () => {
        const results = search(q.query);
        const pages = results.slice(0, q.within).map((r) => r.url.split('#')[0]);
        for (const want of q.expect) {
            assert.ok(pages.includes(want),
                `“${q.query}”的前 ${q.within} 个结果里没有 ${want}：\n  ${results.slice(0, 8)
                    .map((r) => r.url).join('\n  ')}`);
        }
        // 第一个结果不是附录 C 的答案，摘要里有匹配到的词
        assert.ok(!results[0].url.startsWith('appendix/solutions.html'), results[0].url);
        const first = results[0];
        assert.ok(first.terms.some((t) => first.excerpt.toLowerCase().includes(t)) ||
            first.doc.title.toLowerCase().includes(first.terms[0]),
            `第一个结果的摘要没有匹配词：${first.excerpt}`);
    });
}

test('查询切分：中文与英文分开，大小写不敏感，去重', () => {
    assert.deepStrictEqual(zh.splitQuery('LoRA合并 权重 lora'), ['lora', '合并', '权重']);
    assert.deepStrictEqual(zh.splitQuery('  B(Ax)  '), ['b', 'ax']);
    assert.deepStrictEqual(zh.splitQuery('！？'), []);
});

test('三个字以上的中文词同时按原词与二元组匹配；原词与大半二元组都不在书里就没有结果', () => {
    const [unit] = zh.plan({ docs: [] }, ['合并权重']);
    assert.strictEqual(unit.exact, '合并权重');
    assert.deepStrictEqual(unit.grams, ['合并', '并权', '权重']);
    assert.deepStrictEqual(zh.plan({ docs: [] }, ['低秩'])[0].grams, []);
    // 书里没有“合并权重”四个字连在一起，2.3 节靠“合并”“权重”被找到
    const merged = search('合并权重');
    assert.ok(merged.length && merged[0].terms.includes('合并') && merged[0].terms.includes('权重'));
    assert.strictEqual(search('量子纠缠态').length, 0);
});

test('一两个字母的英文词要求词边界', () => {
    assert.deepStrictEqual(zh.positions('max(x, y) + xy', 'x'), [4]);
    assert.deepStrictEqual(zh.positions('lora_branch lora', 'lora'), [0, 12]);
});

test('摘要截取匹配最密集的一段，并标出省略', () => {
    const body = '甲'.repeat(200) + '低秩分解' + '乙'.repeat(200);
    const e = zh.excerpt(body, ['低秩'], 60);
    assert.ok(e.startsWith('…') && e.endsWith('…') && e.includes('低秩分解'), e);
});
